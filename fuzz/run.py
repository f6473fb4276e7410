"""Run the fuzz targets with atheris (libFuzzer), each in its own subprocess.

    python -m fuzz.run                        # make fuzz: at least 100,000 new inputs per target
    python -m fuzz.run --budget-seconds 120   # CI: the corpus plus ~2 minutes of new inputs in all
    python -m fuzz.run --targets stun_message,ice_node --runs 20000
    python -m fuzz.run --reproduce fuzz/crashes/stun_message-crash-<sha1>   # replay one input here

Each target first replays its committed seed corpus (fuzz/corpus/<target>/) and the corpus it
grew in earlier runs (.cache/fuzz/<target>/, not committed), then mutates. Per target it
prints the inputs executed, their rate, the coverage at start and end (libFuzzer's `cov`:
instrumented edges of gateway_pkg) and the inputs that added coverage. A crash (an exception
the target does not document as a reject, a broken invariant, a timeout, running out of
memory) is saved under fuzz/crashes/ and makes the exit status 1; `--reproduce` replays it
in-process with the full traceback, the first step to a regression test in
tests/unit/test_fuzz_regressions.py.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"
CRASHES = ROOT / "fuzz" / "crashes"
GROWN = ROOT / ".cache" / "fuzz"
DEFAULT_RUNS = 100_000
INPUT_TIMEOUT = 10  # seconds for one input before libFuzzer calls it a hang
RSS_LIMIT_MB = 2048


@dataclass
class Result:
    target: str
    returncode: int
    seconds: float
    executed: int = 0
    per_second: int = 0
    cov_start: int = 0
    cov_end: int = 0
    new_units: int = 0
    crash: Path | None = None
    excerpt: str = ""

    @property
    def crashed(self) -> bool:
        return self.returncode != 0


def _target_names() -> list[str]:
    # The registry imports the gateway; the parent only needs the names.
    from fuzz.seed import SEEDS

    return list(SEEDS)


# --- the worker (one target, inside the subprocess) ------------------------------------------------


def worker(name: str, libfuzzer_args: list[str]) -> None:
    import logging

    import atheris

    # The gateway logs what it drops (warnings included): millions of lines, and slower.
    logging.disable(logging.CRITICAL)

    from fuzz import targets as registry_module

    target = registry_module.all_targets()[name]
    # Warm the target up inside the import hook, so every gateway module it reaches (the targets
    # import lazily) is instrumented for coverage, and the packages it names too (dnspython for
    # dns_answer: the fuzzer learns the DNS wire format it must get past to reach our code).
    with atheris.instrument_imports(include=["gateway_pkg", *target.instrument]):
        for seed in sorted((CORPUS / name).iterdir()):
            target(seed.read_bytes())
    atheris.Setup([sys.argv[0], *libfuzzer_args], target)
    print(f"fuzz.run: mutating from {time.monotonic():.3f}", file=sys.stderr, flush=True)
    atheris.Fuzz()


# --- the parent ------------------------------------------------------------------------------------


def _stat(output: str, name: str) -> int:
    found = re.search(rf"stat::{name}:\s+(\d+)", output)
    return int(found.group(1)) if found else 0


def _coverage(output: str, phase: str) -> int:
    found = re.findall(rf"#\d+\s+{phase}\s+cov: (\d+)", output)
    return int(found[-1]) if found else 0


def _excerpt(output: str) -> str:
    """The traceback (or libFuzzer's error), without the instrumentation chatter."""
    lines = [line for line in output.splitlines() if not line.startswith(("INFO: ", "WARNING: Failed to find"))]
    text = "\n".join(lines)
    start = text.find("=== Uncaught Python exception")
    if start < 0:
        start = max(text.find("ERROR: libFuzzer"), 0)
    end = text.find("SUMMARY: libFuzzer", start)
    return text[start : end if end > 0 else start + 4000].strip()


def run_target(name: str, *, runs: int | None, seconds: int | None, seed: int | None, max_len: int) -> Result:
    grown = GROWN / name
    grown.mkdir(parents=True, exist_ok=True)
    CRASHES.mkdir(parents=True, exist_ok=True)
    corpus_size = sum(1 for _ in (CORPUS / name).iterdir()) + sum(1 for _ in grown.iterdir())
    args = [
        f"-max_len={max_len}",
        f"-timeout={INPUT_TIMEOUT}",
        f"-rss_limit_mb={RSS_LIMIT_MB}",
        "-print_final_stats=1",
        f"-artifact_prefix={CRASHES / name}-",
        # libFuzzer counts the corpus it replays as runs: add it, so `runs` are all new inputs.
        f"-runs={(runs + corpus_size) if runs is not None else -1}",
    ]
    if seconds is not None:
        args.append(f"-max_total_time={max(seconds, 1)}")
    if seed is not None:
        args.append(f"-seed={seed}")
    args += [str(grown), str(CORPUS / name)]  # new inputs go to the first directory
    started = time.monotonic()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    completed = subprocess.run(
        [sys.executable, "-m", "fuzz.run", "--worker", name, "--", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, errors="replace", check=False,
    )
    ended = time.monotonic()
    output = completed.stdout + completed.stderr
    executed = _stat(output, "number_of_executed_units")
    # libFuzzer's own rate is in whole seconds; measure from when the worker started fuzzing.
    mutating = re.search(r"fuzz\.run: mutating from ([\d.]+)", output)
    fuzz_seconds = ended - float(mutating.group(1)) if mutating else ended - started
    result = Result(name, completed.returncode, ended - started, executed=executed,
                    per_second=int(executed / fuzz_seconds) if fuzz_seconds > 0 else 0,
                    cov_start=_coverage(output, "INITED"),
                    cov_end=_coverage(output, "(?:DONE|NEW|REDUCE|pulse|INITED)"),
                    new_units=_stat(output, "new_units_added"))
    if result.crashed:
        written = re.findall(r"Test unit written to (\S+)", output)
        result.crash = Path(written[-1]) if written else None
        result.excerpt = _excerpt(output)
        log = GROWN / f"{name}.log"
        log.write_text(output)
    return result


def _print(result: Result) -> None:
    status = "CRASH" if result.crashed else "ok"
    print(f"{result.target:<15} {status:<5} {result.executed:>9} inputs {result.seconds:7.1f} s "
          f"{result.per_second:>7}/s  cov {result.cov_start:>5} -> {result.cov_end:<5} "
          f"(+{result.cov_end - result.cov_start})  new inputs {result.new_units}", flush=True)
    if result.crashed:
        print(f"  saved: {result.crash or 'no artifact (see .cache/fuzz/' + result.target + '.log)'}")
        print("  " + result.excerpt.replace("\n", "\n  "), flush=True)


def reproduce(path: Path) -> int:
    from fuzz.targets import all_targets

    targets = all_targets()
    name = next((n for n in sorted(targets, key=len, reverse=True) if path.name.startswith(n + "-")), None)
    if name is None:
        print(f"cannot tell the target from {path.name} (expected <target>-crash-...)", file=sys.stderr)
        return 2
    try:
        targets[name](path.read_bytes())
    except Exception:
        traceback.print_exc()
        print(f"\n{name} crashes on {path}: bytes {path.read_bytes()!r}")
        return 1
    print(f"{name} does not crash on {path} (fixed, or state-dependent: see the target's docstring)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        worker(argv[1], argv[3:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", help="comma-separated target names (default: all)")
    parser.add_argument("--runs", type=int, help=f"new inputs per target (default {DEFAULT_RUNS:,}, "
                                                 "or unlimited with --budget-seconds)")
    parser.add_argument("--budget-seconds", type=int,
                        help="wall time for all targets together, shared out as they go")
    parser.add_argument("--jobs", type=int, default=1, help="targets fuzzed at once (one core each)")
    parser.add_argument("--seed", type=int, help="libFuzzer's random seed, for a repeatable run")
    parser.add_argument("--max-len", type=int, help="largest input (default: per target)")
    parser.add_argument("--list", action="store_true", help="list the targets and what they cover")
    parser.add_argument("--reproduce", type=Path, help="run one saved input in-process and show the traceback")
    args = parser.parse_args(argv)

    if args.reproduce:
        return reproduce(args.reproduce)
    from fuzz.targets import all_targets

    registry = all_targets()
    if args.list:
        for target in registry.values():
            rejects = ", ".join(target.rejects) or "none (never raises)"
            print(f"{target.name:<15} {target.covers}\n{'':<15} rejects: {rejects}")
        return 0
    names = args.targets.split(",") if args.targets else list(registry)
    unknown = [n for n in names if n not in registry]
    if unknown:
        parser.error(f"unknown targets: {', '.join(unknown)} (try --list)")
    runs = args.runs if args.runs is not None else (None if args.budget_seconds else DEFAULT_RUNS)
    jobs = max(1, args.jobs)
    started = time.monotonic()
    print(f"fuzzing {len(names)} targets: "
          + (f"{runs:,} new inputs each" if runs is not None else "")
          + (" within " if runs is not None and args.budget_seconds else "")
          + (f"{args.budget_seconds} s in all" if args.budget_seconds else ""), flush=True)

    def one(index: int, name: str) -> Result:
        seconds = None
        if args.budget_seconds:
            left = args.budget_seconds - (time.monotonic() - started)
            seconds = int(left * jobs / max(len(names) - index, 1))
        max_len = args.max_len or registry[name].max_len
        result = run_target(name, runs=runs, seconds=seconds, seed=args.seed, max_len=max_len)
        _print(result)
        return result

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(one, range(len(names)), names))
    crashed = [r for r in results if r.crashed]
    total = sum(r.executed for r in results)
    print(f"{len(results)} targets, {total:,} inputs in {time.monotonic() - started:.0f} s; "
          f"{len(crashed)} crashed" + (f": {', '.join(r.target for r in crashed)}" if crashed else ""))
    if runs is not None and not args.budget_seconds:
        short = [r.target for r in results if not r.crashed and r.executed < runs]
        if short:
            print(f"fewer than {runs:,} inputs ran for {', '.join(short)}")
            return 1
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
