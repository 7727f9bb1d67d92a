# make demo: run the example project (examples/demo) end to end.

PYTHON3 ?= python3
VENV ?= .venv

.PHONY: demo
demo: $(VENV)
	$(VENV)/bin/python examples/demo/run.py

# The project, editable, with what the demo needs (the "demo" extra: no test or lint
# tools); removed again if any step fails. An existing $(VENV) is used as it is.
$(VENV):
	$(PYTHON3) -m venv $(VENV) && $(VENV)/bin/python -m pip install -e ".[demo]" \
		|| { rm -rf $(VENV); exit 1; }
