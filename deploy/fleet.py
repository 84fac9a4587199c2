"""Run the FedADMP app on a real Flower 1.41 SuperLink and SuperNodes: ``up``, ``run``, ``down``.

    fedadmp fleet up   --workdir /tmp/fleet --devices 2 --tls --auth
    fedadmp fleet run  --workdir /tmp/fleet --out-dir /tmp/fleet/runs --overrides "data.num_devices=2"
    fedadmp fleet down --workdir /tmp/fleet

(``python deploy/fleet.py ...`` from a source tree is the same.)

``up`` writes what the fleet needs into the work directory (certificates, SuperNode keys, the
Flower configuration ``flwr-home/config.toml``) and starts a supervisor, detached in a session
of its own, which starts the SuperLink (``--tls``: HTTPS with the kit's CA; ``--auth``:
``--enable-supernode-auth``) on a free port, registers each SuperNode's public key (``flwr
supernode register``), starts one worker per device (``python -m clients.worker``: the ClientApp
imported once, on a Unix socket ``nodes/<i>/worker.sock``) and one SuperNode per device (each with
its own Runtime API ``--port`` and node config ``device-id=<i> cache-dir="..."``, plus
``data-path``/``test-path`` if given, and ``worker-socket="..."``: Flower's per-message ClientApp
process, ``clients.entry``, forwards each message to the worker; ``--no-workers``: none, each
message runs in its own process), and returns once every worker listens and every SuperNode is
online. ``run`` is ``flwr run . <federation>
--stream`` against it (``env`` prints the variables to do that by hand); ``down`` stops exactly
what the supervisor started (see deploy/procs.py). Logs: ``supervisor.log``,
``superlink/superlink.out`` (with the ServerApp's output), ``nodes/<i>/supernode.out``
(with the ClientApps'), ``nodes/<i>/worker.log`` (each request the worker served); every command
started is in ``commands.sh``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

if __package__ in (None, ""):  # run as a script (python deploy/fleet.py): make `deploy` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy import procs
from deploy.certs import make_server_cert, make_supernode_key
from deploy.spec import (
    BIN,
    ONLINE_TIMEOUT,
    ROOT,
    STARTUP_TIMEOUT,
    STOP_TIMEOUT,
    Layout,
    Spec,
    app_dir,
    flower_env,
    quoted,
    read_json,
    shell_word,
    socket_path_fits,
    tail,
    worker_socket,
    write_json,
)
from deploy.supervisor import Supervisor


def prepare(lay: Layout, spec: Spec) -> None:
    """Work directory (0700), certificates, SuperNode keys and ``spec.json``; a fresh SuperLink database."""
    lay.root.mkdir(parents=True, exist_ok=True)
    lay.root.chmod(0o700)  # private keys inside
    if spec.tls:
        make_server_cert(lay.certs, [h for h in [spec.host, *spec.sans] if h not in ("0.0.0.0", "::")])
    if spec.auth:
        for i in range(spec.devices + spec.remote):
            make_supernode_key(lay.keys, f"supernode-{i}")
    for stale in (lay.state, lay.link / "state.db"):  # registrations and runs of an earlier `up`
        stale.unlink(missing_ok=True)
    write_json(lay.root / "spec.json", asdict(spec))


def running(lay: Layout) -> bool:
    """True iff this work directory's supervisor still runs."""
    sup = read_json(lay.state).get("supervisor")
    return isinstance(sup, list) and procs.alive((int(sup[0]), int(sup[1])))


def spec_from_args(args: argparse.Namespace) -> Spec:
    """The ``up`` options as a ``Spec``."""
    return Spec(
        devices=args.devices,
        tls=args.tls,
        auth=args.auth,
        host=args.host,
        port=args.port,
        sans=args.san,
        remote=args.remote,
        data_path=args.data_path,
        test_path=args.test_path,
        cache_root=str(Path(args.cache_root).resolve()) if args.cache_root else "",
        federation=args.federation,
        workers=not args.no_workers,
        device_threads=args.device_threads,
    )


def cmd_up(args: argparse.Namespace) -> int:
    """Prepare the work directory, start the supervisor, wait until the fleet is ready (or failed)."""
    lay = Layout(args.workdir.resolve())
    if lay.root == ROOT or ROOT in lay.root.parents:
        print(f"{lay.root} is inside the app folder: `flwr run .` would pack its files into the app bundle")
        return 2
    if running(lay):
        print(f"a fleet already runs in {lay.root}: `fedadmp fleet down --workdir {lay.root}` first")
        return 2
    spec = spec_from_args(args)
    if spec.workers and not socket_path_fits(sock := worker_socket(lay, max(spec.devices - 1, 0))):
        print(f"worker socket path too long for a Unix socket ({sock}): a shorter --workdir, or --no-workers")
        return 2
    prepare(lay, spec)
    with (lay.root / "supervisor.log").open("ab") as log:
        sup = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "supervise", "--workdir", str(lay.root)],
            cwd=lay.root,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives this command and the terminal; `down` ends it
        )
    deadline = time.monotonic() + STARTUP_TIMEOUT + ONLINE_TIMEOUT + 60
    try:
        while (status := read_json(lay.state).get("status")) not in ("ready", "failed", "stopped"):
            if sup.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        sup.send_signal(signal.SIGTERM)  # our unreaped child: its PID is still its own
        sup.wait()
        raise
    if status == "ready":
        print_ready(lay, spec)
        return 0
    state = read_json(lay.state)
    print(f"the fleet did not come up ({status}): {state.get('error', '')}\n{tail(lay.root / 'supervisor.log')}")
    if sup.poll() is None:
        sup.send_signal(signal.SIGTERM)
        sup.wait(timeout=STOP_TIMEOUT * 4)
    return 1


def print_ready(lay: Layout, spec: Spec) -> None:
    """What a user needs next: where the SuperLink is, how to run the app, how to stop, remote devices."""
    state = read_json(lay.state)
    link = state["superlink"]
    print(f"SuperLink {link['address']} ({'TLS' if spec.tls else 'insecure'}{', node auth' if spec.auth else ''})")
    for row in state.get("supernodes", []):
        worker = f", worker pid {row['worker']} on {row['socket']}" if row.get("worker") else ""
        node = f"SuperNode device {row['device']}: Runtime API 127.0.0.1:{row['port']}"
        print(f"{node}{worker}, logs {lay.node(row['device'])}")
    for i in range(spec.devices, spec.devices + spec.remote):
        host = spec.sans[0] if spec.sans else spec.connect_host
        key = ["--auth-supernode-private-key", f"supernode-{i}"] if spec.auth else []
        tls = ["--root-certificates", "ca.crt"] if spec.tls else ["--insecure"]
        cmd = ["flower-supernode", "--superlink", f"{host}:{link['port']}", *tls, *key]
        cmd += ["--node-config", f'device-id={i} data-path="/data/local.npz" cache-dir="/var/cache/fedadmp"']
        print(f"remote device {i} (copy ca.crt and keys/supernode-{i} to it): " + " ".join(shell_word(c) for c in cmd))
    print(f"run:  fedadmp fleet run --workdir {lay.root} --out-dir DIR --overrides '...'")
    print(f"stop: fedadmp fleet down --workdir {lay.root}")


def cmd_supervise(args: argparse.Namespace) -> int:
    """The supervisor itself (started by ``up``)."""
    lay = Layout(args.workdir.resolve())
    spec = Spec(**read_json(lay.root / "spec.json"))
    return Supervisor(lay, spec).run()


def cmd_run(args: argparse.Namespace) -> int:
    """``flwr run . <federation> --stream`` with the fleet's configuration; with ``--out-dir``, exit 1
    unless the run wrote its ``summary.json`` (``flwr run`` exits 0 even when the ServerApp raised)."""
    lay = Layout(args.workdir.resolve())
    if not running(lay) or read_json(lay.state).get("status") != "ready":
        print(f"no fleet is up in {lay.root}")
        return 2
    spec = Spec(**read_json(lay.root / "spec.json"))
    parts = []
    if args.scenario:
        parts.append(f"scenario={quoted(str(Path(args.scenario).resolve()))}")
    if args.overrides:
        parts.append(f"overrides={quoted(args.overrides)}")
    if args.resume:
        parts.append(f"resume={quoted(str(Path(args.resume).resolve()))}")
    out = Path(args.out_dir).resolve() if args.out_dir else None
    if out is not None:
        parts.append(f"out-dir={quoted(str(out))}")
    cmd = [str(BIN / "flwr"), "run", ".", spec.federation, "--stream"]
    for config in ([" ".join(parts)] if parts else []) + args.run_config:
        cmd += ["--run-config", config]
    before = set(out.glob("*/summary.json")) if out is not None else set()
    print(" ".join(shell_word(c) for c in cmd), flush=True)
    app = app_dir(lay.root)
    rc = subprocess.run(cmd, env=flower_env(lay.home), cwd=app, stdin=subprocess.DEVNULL).returncode
    if rc != 0 or out is None:
        return rc
    new = sorted(set(out.glob("*/summary.json")) - before)
    if not new:
        print(f"the run did not finish: no new summary.json in {out} (ServerApp log: {lay.link})")
        return 1
    print(f"run finished: {new[-1].parent}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    """Stop the supervisor (it stops its fleet); then end, by identity, any recorded process left."""
    lay = Layout(args.workdir.resolve())
    sup = read_json(lay.state).get("supervisor")
    if sup and procs.alive((sup[0], sup[1])):
        os.kill(sup[0], signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT * 4
        while procs.alive((sup[0], sup[1])) and time.monotonic() < deadline:
            time.sleep(0.3)
        procs.kill_identities([(sup[0], sup[1])])  # only if it hung
    # A supervisor killed outright leaves its last record: end what of it still runs.
    left = procs.kill_identities([(m[0], m[1]) for m in read_json(lay.state).get("members", [])])
    print(f"fleet in {lay.root} stopped" + (f"; still running: {left}" if left else ""))
    return 1 if left else 0


def cmd_status(args: argparse.Namespace) -> int:
    """Print the fleet's state; exit 0 iff it is up."""
    lay = Layout(args.workdir.resolve())
    state = read_json(lay.state)
    up = running(lay) and state.get("status") == "ready"
    print(json.dumps({k: state.get(k) for k in ("status", "superlink", "supernodes", "exited", "error")}, indent=1))
    return 0 if up else 1


def cmd_env(args: argparse.Namespace) -> int:
    """Print the shell lines that point ``flwr`` at the fleet."""
    lay = Layout(args.workdir.resolve())
    spec = Spec(**read_json(lay.root / "spec.json"))
    print(f"export PATH={shell_word(str(BIN))}:$PATH FLWR_HOME={shell_word(str(lay.home))}")
    print("export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 FLWR_DISABLE_UPDATE_CHECK=1")
    app = shell_word(str(app_dir(lay.root)))
    print(f"# cd {app} && flwr run . {spec.federation} --stream --run-config 'out-dir=\"/abs/runs\"'")
    return 0


def parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command line (see the module docstring); ``prog``: the name it is called by."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    cmds = {
        "up": (cmd_up, "start a SuperLink and SuperNodes"),
        "run": (cmd_run, "run the app on the fleet (flwr run . --stream)"),
        "down": (cmd_down, "stop everything `up` started"),
        "status": (cmd_status, "show the fleet's state"),
        "env": (cmd_env, "print the environment for running `flwr` by hand"),
        "supervise": (cmd_supervise, argparse.SUPPRESS),
    }
    subs = {}
    for name, (func, help_text) in cmds.items():
        subs[name] = sub.add_parser(name, help=help_text)
        subs[name].set_defaults(func=func)
        subs[name].add_argument("--workdir", type=Path, required=True, help="the fleet's folder (outside the app)")
    up = subs["up"]
    up.add_argument("--devices", type=int, default=2, help="local SuperNodes (device ids 0..N-1)")
    up.add_argument("--tls", action="store_true", help="HTTPS with a CA made in <workdir>/certs")
    up.add_argument("--auth", action="store_true", help="SuperNode authentication (keys in <workdir>/keys)")
    up.add_argument("--host", default="127.0.0.1", help="address the SuperLink listens on (0.0.0.0: all)")
    up.add_argument("--port", type=int, default=0, help="SuperLink port (default: a free one)")
    up.add_argument("--san", action="append", default=[], help="more DNS names/IPs for the certificate")
    up.add_argument("--remote", type=int, default=0, help="more keys to register, for devices started elsewhere")
    up.add_argument("--data-path", default="", help='per-device data file, "{i}" = device id')
    up.add_argument("--test-path", default="", help='per-device labeled test npz, "{i}" = device id')
    up.add_argument("--cache-root", default="", help="teacher caches in <dir>/device-<i>")
    up.add_argument("--federation", default="fleet", help="name of the SuperLink connection in config.toml")
    up.add_argument("--no-workers", action="store_true", help="no per-device worker: each message imports the app")
    up.add_argument(
        "--device-threads",
        type=int,
        default=0,
        help="torch threads per local device (e.g. cores // devices: faster on a shared host, last digits differ "
        "from the simulation's); 0: torch's default",
    )
    run = subs["run"]
    run.add_argument("--scenario", default="", help="scenario YAML")
    run.add_argument("--overrides", default="", help='"key=value; key=value" scenario overrides')
    run.add_argument("--out-dir", default="", help="where the run directory goes")
    run.add_argument("--resume", default="", help="a run directory to continue")
    run.add_argument("--run-config", action="append", default=[], help="raw `flwr run --run-config` (repeatable)")
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Entry point: ``fedadmp fleet`` or ``python deploy/fleet.py`` ``{up,run,down,status,env} --workdir DIR ...``."""
    args = parser(prog).parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
