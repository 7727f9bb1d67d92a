# make demo: run the example project (examples/demo) end to end.

PYTHON3 ?= python3
VENV ?= .venv

.PHONY: demo
demo: $(VENV)
	$(VENV)/bin/python examples/demo/run.py

# The project, editable, with its dev extras; removed again if any step fails.
$(VENV):
	$(PYTHON3) -m venv $(VENV) && $(VENV)/bin/python -m pip install -e ".[dev]" \
		|| { rm -rf $(VENV); exit 1; }
