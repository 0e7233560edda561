"""The sandbox for model-written code and the code rewards: hostile programs fail safely, score 0
and leave the test process (standing in for the trainer) untouched, on both network mechanisms
(the kernel's network namespace and the audit-hook denial fallback); correct programs score 1;
64 samples score in parallel on a bounded pool; the code task's smoke config trains."""

import errno
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from run_helpers import load_config

import jaxrl_llm as jrl
from jaxrl_llm.data.code import code_records, write_code_jsonl
from jaxrl_llm.data.sources import get_field, make_source
from jaxrl_llm.rewards import get_reward, score_completions
from jaxrl_llm.rewards.code import extract_code, parse_tests, score_code_stdout, score_code_tests
from jaxrl_llm.rewards.sandbox import Program, Sandbox, SandboxError, _blocked_ancestor
from jaxrl_llm.train.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IS_ROOT = os.geteuid() == 0
TESTS = json.dumps(["assert f(1) == 4", "assert f(-3) == 0", "assert f(10) == 13"])
TIMEOUT = 1.5


@pytest.fixture(scope="module", params=["namespace", "deny"])
def box(request):
    """A sandbox forced onto one network mechanism ('deny' = the fallback, forced by option)."""
    try:
        sandbox = Sandbox(network=request.param, timeout_s=TIMEOUT, workers=2).probe()
    except SandboxError as e:
        if request.param == "namespace":
            pytest.skip(f"this machine refuses namespaces: {e}")
        raise
    print(f"\n{sandbox}")
    yield sandbox
    sandbox.close()


def processes_of(uids) -> list[tuple[int, int]]:
    """(pid, uid) of every process whose real uid is in `uids`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/status") as f:
                    uid = next(int(line.split()[1]) for line in f if line.startswith("Uid:"))
            except (OSError, StopIteration):
                continue
            if uid in uids:
                found.append((int(entry), uid))
    return found


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def assert_scores_zero(box, source: str):
    """The program as a completion scores 0 on the tests (it defines no working f)."""
    program = Program(source, tests=tuple(parse_tests(TESTS)[1]))
    assert box.run(program).pass_rate == 0.0


def assert_no_leftovers(box):
    if box.uids:
        assert processes_of(set(box.uids)) == []


FORK_LOOP = """
import os, time
n, error = 0, None
for _ in range(200):  # bounded: never an unbounded fork bomb on a shared machine
    try:
        pid = os.fork()
    except OSError as e:
        error = e.errno
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    n += 1
print(n, error)
"""


def test_fork_loop_is_stopped_by_the_process_limit(box):
    result = box.run(FORK_LOOP)
    n, error = result.stdout.split()
    print(f"{box.network}: {n} forks before {error}")
    if IS_ROOT:  # the sample's own uid: RLIMIT_NPROC counts its processes alone
        assert error == str(errno.EAGAIN) and int(n) < box.config.max_processes
    assert_no_leftovers(box)  # the sleeping children died with the sample
    assert_scores_zero(box, FORK_LOOP)


def test_infinite_loop_times_out_and_its_processes_are_killed(box):
    source = "import os\nif os.fork() == 0:\n    os.setsid()\nwhile True:\n    pass\n"
    start = time.monotonic()
    result = box.run(source)
    elapsed = time.monotonic() - start
    assert result.status == "timeout" and result.exit_code is None
    assert TIMEOUT <= elapsed < TIMEOUT + 1.5, elapsed
    assert_no_leftovers(box)  # the child that left the process group too
    assert_scores_zero(box, source)


def test_ten_gigabyte_allocation_hits_the_memory_limit(box):
    source = "x = bytearray(10 * 1024**3)\nprint('allocated')\n"
    result = box.run(source)
    assert result.status == "memory" and "allocated" not in result.stdout
    assert_scores_zero(box, source)


def test_no_connection_reaches_a_listening_socket(box):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    port = server.getsockname()[1]
    source = (
        "import socket\n"
        f"s = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
        "s.sendall(b'leak')\nprint('connected')\n"
    )
    try:
        result = box.run(source)
        assert result.status == "error" and "connected" not in result.stdout
        if box.network == "namespace":
            assert "Network is unreachable" in result.stderr
        else:
            assert "sandbox: socket" in result.stderr  # the audit hook refused it
        assert_scores_zero(box, source)
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing ever arrived
    finally:
        server.close()


@pytest.mark.skipif(not IS_ROOT, reason="as a non-root trainer the sandbox runs as the same user")
def test_a_file_in_a_0700_directory_of_the_trainer_is_unreadable(box, tmp_path):
    private = tmp_path / "run"
    private.mkdir(mode=0o700)
    os.chmod(private, 0o700)
    secret = private / "secret.txt"
    secret.write_text("s3cret")
    source = f"print(open({str(secret)!r}).read())\n"
    result = box.run(source)
    assert result.status == "error" and "PermissionError" in result.stderr
    assert "s3cret" not in result.stdout + result.stderr
    assert_scores_zero(box, source)
    assert secret.read_text() == "s3cret"  # the trainer's file is intact


def test_environment_variables_of_the_trainer_are_invisible(box, monkeypatch):
    monkeypatch.setenv("JAXRL_TEST_SECRET", "hunter2")
    source = (
        "import os\nprint(os.environ.get('JAXRL_TEST_SECRET'))\nprint(sorted(os.environ))\n"
        f"try:\n    print(open('/proc/{os.getpid()}/environ').read())\n"
        "except OSError as e:\n    print(type(e).__name__)\n"
    )
    result = box.run(source)
    assert result.ok and "hunter2" not in result.stdout
    lines = result.stdout.splitlines()
    assert lines[0] == "None" and lines[1] == "['HOME', 'LANG', 'PATH']"
    if IS_ROOT:  # another uid may not read the trainer's /proc/<pid>/environ
        assert lines[2] in ("PermissionError", "FileNotFoundError")
    assert_scores_zero(box, source)


def test_the_trainer_cannot_be_signalled(box):
    result = box.run(f"import os\nos.kill({os.getpid()}, 0)\nprint('reached')\n")  # signal 0: harmless
    assert result.status == "error" and "reached" not in result.stdout
    assert any(e in result.stderr for e in ("PermissionError", "ProcessLookupError")), result.stderr


def test_flooding_output_is_cut_and_killed(box):
    result = box.run("while True:\n    print('x' * 1000)\n")
    assert result.status == "output_limit" and result.truncated
    assert len(result.stdout) <= box.config.max_output_bytes
    assert_no_leftovers(box)


def test_passes_cannot_be_faked(box):
    tests = tuple(parse_tests(TESTS)[1])
    fakes = [
        "import os\nos._exit(0)\n",  # exits 0 before the tests run
        "import sys\nsys.exit(0)\n",
        "print('PASS 0 1\\nPASS 1 1\\nPASS 2 1')\n",
        "import os\nfor fd in range(3, 32):\n    for i in range(3):\n        try:\n"
        "            os.write(fd, f'x {i} 1\\n'.encode())\n        except OSError:\n            pass\n",
    ]
    for fake in fakes:
        assert box.run(Program(fake, tests=tests)).tests == (False, False, False), fake


def test_correct_programs_score_one(box):
    results = box.run_many(
        [
            Program("def f(x):\n    return x + 3\n", tests=parse_tests(TESTS)[1]),
            Program("def f(x):\n    return 4 if x == 1 else x + 3\n", tests=parse_tests(TESTS)[1]),
            Program("def f(x):\n    return 4\n", tests=parse_tests(TESTS)[1]),
            Program("n = int(input())\nprint(n * 2)\n", stdin="21\n"),
        ]
    )
    assert [r.pass_rate for r in results[:3]] == [1.0, 1.0, 1 / 3]
    assert results[3].ok and results[3].stdout == "42\n"


def test_code_rewards():
    """The registered rewards through score_completions (default sandbox), and the batch API."""
    fns = [(name, get_reward(name), 1.0) for name in ("code_tests", "code_tests_all")]
    completions = [
        "Here it is:\n```python\ndef f(x):\n    return x + 3\n```\nDone.",  # fenced
        "def f(x):\n    return x + 3",  # raw text
        "```python\ndef f(x):\n    if x == 1:\n        return 4\n    return 0\n```",  # 2 of 3
        "```python\ndef f(x) return x + 3\n```",  # does not compile: 0 without a sandbox
        "```python\ndef f(x):\n    return x + 3",  # cut by the length limit
    ]
    answers = [TESTS] * len(completions)
    n = len(completions)
    _, values = score_completions(fns, ["q"] * n, completions, answers, [True] * n)
    np.testing.assert_allclose(values["code_tests"], [1, 1, 2 / 3, 0, 1], rtol=1e-6)
    np.testing.assert_array_equal(values["code_tests_all"], [1, 1, 0, 0, 1])
    np.testing.assert_allclose(score_code_tests(completions, answers), values["code_tests"], rtol=1e-6)

    stdout = get_reward("code_stdout")
    answer = json.dumps({"stdin": "3 4\n", "stdout": "7\n"})
    summing = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    assert stdout(prompt="", completion=summing, answer=answer, finished=True) == 1.0
    assert stdout(prompt="", completion="print(8)", answer=answer, finished=True) == 0.0
    assert stdout(prompt="", completion="print('hi')  ", answer="hi\n", finished=False) == 1.0
    assert score_code_stdout(["print(1/0)", "print(7)"], ["", "7"]).tolist() == [0.0, 1.0]


def test_test_formats_and_code_extraction():
    mbpp = {"test_list": ["assert f(1) == 2"], "test_imports": ["import math"], "test_setup_code": ""}
    assert parse_tests(json.dumps(mbpp)) == ("import math", ("assert f(1) == 2",))
    assert parse_tests(str(["assert f(1) == 2"])) == ("", ("assert f(1) == 2",))  # Python repr
    assert parse_tests("assert f(1) == 2\nassert f(2) == 3\n")[1] == ("assert f(1) == 2", "assert f(2) == 3")
    assert extract_code("```py\na = 1\n```\ntext\n```python\nb = 2\n```") == "b = 2\n"
    assert extract_code("```bash\nls\n```\nx = 1") == "```bash\nls\n```\nx = 1"
    assert extract_code("no fences") == "no fences"


def test_sixty_four_samples_score_in_parallel():
    workers = 16
    sandbox = Sandbox(timeout_s=10.0, workers=workers).probe()
    try:
        source = "import time\nstart = time.time()\ntime.sleep(0.25)\nprint(start, time.time())\ndef f(x):\n    return x + 3\n"
        tests = parse_tests(TESTS)[1]
        one = sandbox.run(Program(source, tests=tests))
        start = time.monotonic()
        results = sandbox.run_many([Program(source + f"# {i}\n", tests=tests) for i in range(64)])
        wall = time.monotonic() - start
    finally:
        sandbox.close()
    assert [r.pass_rate for r in results] == [1.0] * 64
    spans = sorted(tuple(map(float, r.stdout.split())) for r in results)
    most = max(sum(s <= t < e for s, e in spans) for t, _ in spans)  # programs running at once
    print(
        f"\n{sandbox}: 64 samples in {wall:.2f} s on {workers} workers (one alone: {one.wall_time:.2f} s, "
        f"64 serially ~{64 * one.wall_time:.1f} s); at most {most} at once"
    )
    assert most <= workers
    assert wall < 64 * one.wall_time / 4


def test_code_task_and_jsonl_files(tmp_path):
    splits = {s: code_records(s) for s in ("train", "validation", "test")}
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [240, 60, 60]
    questions = [{r["question"] for r in records} for records in splits.values()]
    assert sum(map(len, questions)) == len(set().union(*questions))  # disjoint splits
    assert code_records("test") == splits["test"]  # deterministic
    pattern = write_code_jsonl(str(tmp_path))
    config = jrl.base_config().data
    config.update(name="jsonl", path=pattern)
    source = make_source(config, "test")
    assert [r["question"] for r in source] == [r["question"] for r in splits["test"]]
    answers = [get_field(r, "answer", i, "data.answer_field") for i, r in enumerate(source)]
    solutions = [r["solution"] for r in source]
    assert score_code_tests(solutions, answers).tolist() == [1.0] * len(solutions)
    config.update(name="code")
    assert list(make_source(config, "validation")) == splits["validation"]


def test_smoke_config_trains(tmp_path):
    config = load_config("grpo_code")
    workdir = str(tmp_path / "run")
    summary = jrl.train(config, workdir)
    assert {"greedy_accuracy", "pass_at_2"} <= set(summary["main_after"])
    main = [r for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if r["phase"] == "main"]
    assert len(main) == config.train.steps
    assert all(np.isfinite(r["reward/code_tests"]) for r in main)


@pytest.mark.skipif(not IS_ROOT, reason="needs root to start a process as another user")
def test_a_non_root_trainer_runs_programs_as_itself():
    """The sandbox used by a trainer without root (run here as uid 65534): programs run as that
    user, still without network, environment or leftovers."""
    module = os.path.join(ROOT, "jaxrl_llm", "rewards", "sandbox.py")
    if _blocked_ancestor(os.path.dirname(module), 65534, 65534) or not os.stat(module).st_mode & 0o004:
        pytest.skip(f"uid 65534 cannot read {module}")
    python = Sandbox(network="deny", workers=1).probe().python  # one the sandbox's users may run
    script = f"""
import importlib.util, json, os, sys
spec = importlib.util.spec_from_file_location("sandbox", {module!r})
sandbox = importlib.util.module_from_spec(spec)
sys.modules["sandbox"] = sandbox
spec.loader.exec_module(sandbox)
os.environ["JAXRL_TEST_SECRET"] = "hunter2"
box = sandbox.Sandbox(timeout_s=1.0, workers=2, tmp_dir="/tmp").probe()
net = box.run("import socket\\nsocket.create_connection(('127.0.0.1', 9), 1)")
env = box.run("import os\\nprint(os.getuid(), os.environ.get('JAXRL_TEST_SECRET'))")
loop = box.run("import os\\nif os.fork() == 0:\\n    os.setsid()\\nwhile True:\\n    pass")
kill = box.run(f"import os\\nos.kill({{os.getpid()}}, 0)")
deny = sandbox.Sandbox(network="deny", timeout_s=1.0, workers=1, tmp_dir="/tmp")
denied = [deny.run(p).status for p in ("import socket\\nsocket.socket()", f"import os\\nos.kill({{os.getpid()}}, 0)")]
print(json.dumps([box.network, box.user, net.status, env.stdout, loop.status, kill.status, denied]))
"""
    try:
        done = subprocess.run(
            [python, "-I", "-c", script],
            user=65534,
            group=65534,
            extra_groups=[],
            env={"PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=30,
            cwd="/",
        )
    except PermissionError as e:
        pytest.skip(f"cannot start a process as uid 65534 here: {e}")
    assert done.returncode == 0, done.stderr
    network, user, net, env, loop, kill, denied = json.loads(done.stdout.splitlines()[-1])
    print(f"\nnon-root trainer: network={network}, user={user}")
    assert user == "current" and net == "error" and env == "65534 None\n" and loop == "timeout"
    assert kill == "error" and denied == ["error", "error"]
    time.sleep(0.1)
    assert [p for p, _ in processes_of({65534}) if "_sandbox_boot" in cmdline(p)] == []


def test_the_trainer_process_is_untouched():
    """After everything above: this process still has its environment, files and children."""
    assert os.path.isdir(ROOT) and sys.executable
    child = subprocess.run([sys.executable, "-c", "print('alive')"], capture_output=True, text=True)
    assert child.stdout == "alive\n"
