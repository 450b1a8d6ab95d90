"""``python -m e2e.lab up|down|status|restart NAME|logs NAME``."""

from __future__ import annotations

import argparse
import logging
import sys

from e2e.lab.components import BY_NAME
from e2e.lab.controlplane import Lab
from e2e.lab.waiting import LabError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.lab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="start the lab, or reuse it when it is healthy")
    commands.add_parser("down", help="stop every process of the lab")
    commands.add_parser("status", help="show each process; exit 1 when one is unhealthy")
    restart = commands.add_parser("restart", help="restart one component")
    restart.add_argument("component", choices=sorted(BY_NAME))
    logs = commands.add_parser("logs", help="print the tail of one component's log")
    logs.add_argument("component", choices=sorted(BY_NAME))
    logs.add_argument("-n", "--lines", type=int, default=40)
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.INFO,
        format="lab %(asctime)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    lab = Lab()
    try:
        if args.command == "up":
            lab.up()
            print(f"kubeconfig: {lab.kubeconfig}")
            print(f"env:        {lab.paths.env_file}  (source it: . {lab.paths.env_file})")
            print(f"apiserver:  {lab.apiserver_url}")
            print(f"prometheus: {lab.prometheus_url}")
            if lab.gateway_url:
                print(f"gateway:    {lab.gateway_url}")
        elif args.command == "down":
            lab.down()
            print("lab is down")
        elif args.command == "status":
            statuses = lab.status()
            for status in statuses:
                print(status)
            return 0 if all(s.healthy or not s.required for s in statuses) else 1
        elif args.command == "restart":
            lab.restart_component(args.component)
        elif args.command == "logs":
            print(lab.log_tail(args.component, args.lines))
    except LabError as exc:
        print(f"lab {args.command} failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
