"""pytest plugin for `tools/mutation.py --in-process`: one test session tries many mutants.

mutmut forks a fresh pytest run per mutant, which costs seconds of collection and fixture set-up each; here
the tests are collected once and every mutant named in $MUTATION_LIST is switched on in turn (mutmut's
trampolines read MUTANT_UNDER_TEST at each call) and run against the collected tests until the first
failure. Within one mutant's run fixtures are shared as pytest shares them; everything is torn down before
the next mutant, so no fixture made under one mutant serves another. Results go to $MUTATION_OUT, one
`name status seconds` line per mutant, where status is killed, survived or timeout ($MUTATION_TIMEOUT seconds
a mutant, default 60). Each mutant's temporary directories are removed once its fixtures are torn down:
tmp_path numbers a new one per test, which over thousands of mutants would come to gigabytes.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from typing import Any

from _pytest.runner import runtestprotocol


class _TimeoutError(Exception):
    pass


def _alarm(*_: Any) -> None:
    raise _TimeoutError


def _empty_basetemp(session: Any) -> None:
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:     # the tmpdir plugin is off: no test made a directory
        return
    for child in factory.getbasetemp().iterdir():
        if child.is_symlink():      # pytest's "<name>current" link to the directory removed below
            child.unlink()
        elif child.is_dir():
            shutil.rmtree(child, ignore_errors=True)


def pytest_runtestloop(session: Any) -> bool:
    with open(os.environ["MUTATION_LIST"]) as f:
        names = [line.strip() for line in f if line.strip()]
    limit = int(os.environ.get("MUTATION_TIMEOUT", "60"))
    signal.signal(signal.SIGALRM, _alarm)
    items = list(session.items)
    with open(os.environ["MUTATION_OUT"], "a") as out:
        for name in names:
            os.environ["MUTANT_UNDER_TEST"] = name
            status, t0 = "survived", time.perf_counter()
            signal.alarm(limit)
            try:
                for i, item in enumerate(items):
                    reports = runtestprotocol(item, nextitem=items[i + 1] if i + 1 < len(items) else None,
                                              log=False)
                    if any(r.failed for r in reports):
                        status = "killed"
                        # Mutants of one function come together and mostly fall to one test: try it first.
                        items.insert(0, items.pop(i))
                        break
            except _TimeoutError:
                status = "timeout"
            finally:
                signal.alarm(0)
            out.write(f"{name} {status} {time.perf_counter() - t0:.2f}\n")
            out.flush()
            signal.alarm(limit)
            try:
                session._setupstate.teardown_exact(None)   # every fixture of this mutant's run
            except _TimeoutError:
                # A mutant left threads blocked and a fixture waits for them: this session cannot go on.
                # Its verdict is written; tools/mutation.py starts a new session for the mutants left.
                os._exit(3)
            finally:
                signal.alarm(0)
            _empty_basetemp(session)
    os.environ["MUTANT_UNDER_TEST"] = ""
    return True
