# Two commands for a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv proto clean-venv

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements.txt
	$(VPY) -m pip install -q --no-deps -r requirements-nodeps.txt
	# CrypTen's wheel drops top-level test/examples/benchmarks folders into site-packages;
	# its `benchmarks` collides with ours. Keep its `configs` (it reads configs/default.yaml).
	$(VPY) -c "import sysconfig,shutil,os; sp=sysconfig.get_paths()['purelib']; [shutil.rmtree(os.path.join(sp,d)) for d in ('benchmarks','examples','test') if os.path.isdir(os.path.join(sp,d))]"
	$(VPY) -m pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	PYTHONUNBUFFERED=1 $(VPY) -m benchmarks demo

test: $(STAMP)
	PYTHONUNBUFFERED=1 $(VPY) -m pytest -q tests

proto: $(STAMP)
	$(VPY) -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. protocols/wire/pinfer.proto

clean-venv:
	rm -rf $(VENV)
