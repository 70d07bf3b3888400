"""nbval on the chapters that only read results/ (`make test`): their committed outputs are the reference.

nbdev-clean stores every cell without an execution count, which nbval takes for a cell never run ("Unrun reference cell
has outputs"); a cell that has committed outputs was run, so it is numbered here before nbval compares it."""


def pytest_collection_modifyitems(items):
    for n, item in enumerate(items, 1):
        cell = getattr(item, 'cell', None)
        if cell is not None and cell.get('outputs') and cell.get('execution_count') is None: cell['execution_count'] = n
