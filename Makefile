# Everything installs itself into .venv: `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch/torchvision are installed first and explicitly: the versions this project is tested with.
TORCH  ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test sync-check nbtest pytest render lab clean

# The install is stamped with a checksum of what it is made from (pyproject.toml and the torch pins), not with their
# modification time: rewriting pyproject.toml with the same content (nbdev-export did, before `update_pyproject = false`)
# or a git checkout must not install everything again in the middle of `make test`; a changed dependency must.
STAMP  := $(VENV)/.installed-$(shell { cat pyproject.toml; echo '$(TORCH)'; } | cksum | cut -d' ' -f1)

$(STAMP):
	rm -f $(VENV)/.installed*
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev,bench]"
	touch $@

install: $(STAMP)

## The main job: PCA, MAE and PMAE (micro) and fast linear probes on CIFAR-10 in data/ if present, else the embedded photos
demo: install
	$(BIN)/pmae demo

## The whole test suite, with a timing line at the end
test:
	@t0=$$(date +%s); \
	$(MAKE) --no-print-directory install && t1=$$(date +%s) && \
	$(MAKE) --no-print-directory sync-check && t2=$$(date +%s) && \
	$(MAKE) --no-print-directory nbtest && t3=$$(date +%s) && \
	$(MAKE) --no-print-directory pytest && t4=$$(date +%s) && \
	echo "make test: $$((t4-t0)) s in all (install $$((t1-t0)) s, export/clean check $$((t2-t1)) s, nbdev-test $$((t3-t2)) s, pytest $$((t4-t3)) s)"

## Package and notebooks in sync: nbdev-export and nbdev-clean must not change anything
sync-check: install
	@before="$$(git status --porcelain; git diff | md5sum)"; \
	$(BIN)/nbdev-export && $(BIN)/nbdev-clean && \
	after="$$(git status --porcelain; git diff | md5sum)"; \
	if [ "$$before" != "$$after" ]; then \
		echo "nbdev-export / nbdev-clean changed files: run them and commit the result."; git status --short; exit 1; \
	else echo "package and notebooks are in sync"; fi

## The chapters are the unit tests (cells flagged slow or gpu are skipped; see tst_flags); the chapters that read results/
## or committed weights run under nbval instead (`pytest` below), so that no chapter runs twice
nbtest: install
	$(BIN)/nbdev-test --timing --skip-file-re '$(RESULT_CHAPTERS)'

## Command-line, fault and bad-input tests; then every chapter whose outputs come from results/ or committed weights is
## re-run by nbval (its assertions included), and a committed output derived from them (a cell marked NBVAL_CHECK_OUTPUT)
## that no longer matches what results/ gives fails: a stale chapter. Cells flagged `#| gpu` carry NBVAL_SKIP.
RESULT_CHAPTERS := ^(index|05_mae|06_pmae|10_quickstart|2[0-6][a-z]?_[a-z0-9_]+)\.ipynb$$
NBVAL := $(shell ls nbs/*.ipynb | grep -E '/(index|05_mae|06_pmae|10_quickstart|2[0-6][a-z]?_[a-z0-9_]+)\.ipynb$$')
pytest: install
	$(BIN)/python -m pytest tests -p no:cacheprovider
	$(BIN)/python -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider $(NBVAL)

## Re-render every chapter whose outputs come from results/ or committed weights, with the data in $$PMAE_DATA (default:
## data/): run this after results land, then commit; `make test` fails while a committed output disagrees with results/.
## The figures are then stored as palette PNGs (bench/shrink_figures.py): the tracked tree stays under 10 MiB.
render: install
	PMAE_DATA=$${PMAE_DATA:-$(CURDIR)/data} $(BIN)/nbdev-test --n-workers 1 --save --file-re '$(RESULT_CHAPTERS)'
	$(BIN)/python bench/shrink_figures.py nbs/*.ipynb
	$(BIN)/nbdev-clean

lab: install
	$(BIN)/jupyter lab nbs

clean:
	rm -rf $(VENV) runs/demo
