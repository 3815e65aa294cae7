# Two entry points: `make demo` (offline demo) and `make test` (test suite). Each creates .venv
# and installs lpt into it first; nothing needs to be installed by hand beyond Python 3.11.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# torch and torchvision pinned to the CPU/CUDA wheels this project is tested with; override for
# another CUDA build, e.g. `make demo TORCH_SPEC="torch torchvision"`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
STAMP := $(VENV)/.installed

.PHONY: demo test install fashion-mnist clean

install: $(STAMP)

# the install also builds data.decode=fast's cropped JPEG decoder (C), where libjpeg-turbo's headers are
$(STAMP): pyproject.toml src/lpt/data/_jpegcrop.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH_SPEC)
	rm -f src/lpt/data/_jpegcrop*.so  # an older build (a per-Python name) would be imported ahead of a new one
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

fashion-mnist:
	@if [ ! -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ] && [ ! -f $(FMNIST_DIR)/train-images-idx3-ubyte ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "Fashion-MNIST not found under $(FMNIST_DIR): installing Debian's dataset-fashion-mnist"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	  else \
	    echo "Fashion-MNIST not found under $(FMNIST_DIR): run 'sudo apt-get install dataset-fashion-mnist', or '$(BIN)/lpt demo --download' where this machine has internet"; \
	    exit 1; \
	  fi; \
	fi

demo: $(STAMP) fashion-mnist
	$(BIN)/lpt demo $(DEMO_ARGS)

# lint first (ruff, and import-linter's layer and cycle contracts of docs/architecture.md), then the tests
test: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q $(TEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
