# The two entry points in README.md. Each does all set-up on a fresh machine.
.PHONY: demo test setup proto

setup:
	./scripts/setup.sh

demo: setup
	HF_HUB_OFFLINE=1 .venv/bin/xvla-demo

test: setup
	.venv/bin/ruff check .
	HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests

proto: setup
	.venv/bin/python proto/generate.py
