"""Two OS processes of two CPU devices each, joined by ``jax.distributed.initialize`` on
loopback (gloo collectives): ring attention in both layouts, Ulysses and the NNX module on a
mesh spanning both processes equal the single-device functions (``multiprocess_check.py``)."""

import json
import pathlib
import socket
import subprocess
import sys


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_device():
    script, port = pathlib.Path(__file__).with_name("multiprocess_check.py"), str(free_port())
    workers = [subprocess.Popen([sys.executable, str(script), str(i), port], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [w.communicate(timeout=600) for w in workers]
    for worker, (_, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr[-3000:]
    result = json.loads(outputs[0][0].strip().splitlines()[-1])  # gloo prints its connections first
    assert result["processes"] == 2 and result["devices"] == 4, result
    for name in ("ring", "ring zigzag", "ulysses", "module"):
        assert result[name]["forward"] <= 1e-5 and result[name]["gradients"] <= 1e-5, (name, result[name])


def test_the_many_hosts_example_runs_as_two_processes():
    root = pathlib.Path(__file__).parents[2]
    done = subprocess.run([sys.executable, "-m", "examples.many_hosts"], cwd=root, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    line = [x for x in done.stdout.splitlines() if x.startswith("2 processes")][0]
    values, grads = (float(x.split()[0]) for x in line.split("within ")[1].split(", "))
    assert values <= 1e-5 and grads <= 1e-5, line
