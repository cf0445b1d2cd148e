"""``eyenet models list|show|promote|rollback``: the registry, by hand.

Promotion runs the label-free gates (:mod:`eyenet.models.gates`) unless ``--skip-gate``;
whatever follows the production model (Serve replicas, the feature pool, the monitor)
picks the new version up by itself.
"""

from __future__ import annotations

import json

from eyenet.config import EyeNetConfig
from eyenet.models.gates import promotion_gates
from eyenet.models.registry import ModelRegistry
from eyenet.store import open_store
from jobs.options import ModelsOptions, job_main


def main(config: EyeNetConfig, options: ModelsOptions) -> int:
    registry = ModelRegistry(open_store(config.store_uri), config.artifact_root)
    if options.action == "list":
        versions = registry.list(options.name)
        if options.json:
            print(json.dumps([v.to_dict() for v in versions], indent=1))
            return 0
        if not versions:
            print(f"no versions of {options.name} registered")
        for v in versions:
            print(f"{v.name}  v{v.version:<4} {v.state:<10} {v.created_at}  "
                  f"{json.dumps(v.metrics, sort_keys=True)}")
        return 0
    if options.action == "show":
        print(json.dumps(registry.get(options.name, options.version).to_dict(), indent=1))
        return 0
    if options.action == "promote":
        gates = [] if options.skip_gate else promotion_gates(config, registry)
        mv = registry.promote(options.name, options.version, gates=gates)
        print(f"{mv.name} v{mv.version} is now {mv.state}"
              + (f"; gate: {json.dumps(mv.gate_report, sort_keys=True)}" if mv.gate_report else ""))
        return 0
    mv = registry.rollback(options.name)
    print(f"rolled back: {mv.name} v{mv.version} is now {mv.state}")
    return 0


if __name__ == "__main__":
    raise SystemExit(job_main(ModelsOptions, main, prog="python -m jobs.models",
                              description=__doc__))
