"""Fixtures of the handler-library tests: `start` runs a handler script and stops it afterwards."""
import pytest

from handler_pipes import HandlerProcess


@pytest.fixture
def start():
    started = []

    def run(argv, env=None):
        handler = HandlerProcess(argv, env)
        started.append(handler)
        return handler

    yield run
    for handler in started:
        handler.stop()
