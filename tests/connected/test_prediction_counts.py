"""The connected run's record of the predictor -> buffer hop: the predictors' status files and
payload counts, and the reconciliation's checks over them (exact on a gateway whose predictor
ran once; at least as many taken as recorded where a kill -9 cut a process's record short)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from local_platform.connected.gateway import handled_payloads, payloads_file
from local_platform.connected.plan import Plan, write_json
from local_platform.connected.reconcile import Reconciliation, reconcile_predictions


def _predictor(
    plan: Plan,
    factory: str,
    pid: int,
    confirmed: int,
    payloads: int,
    *,
    in_flight: int = 0,
    updated: float = 2.0,
) -> None:
    status = plan.status_dir / f"predictor-{factory}-{pid}.json"
    write_json(
        status,
        {
            "pid": pid,
            "updated": updated,
            "predictions": {"v1": confirmed},
            "readings_payloads": payloads,
            "predictions_published": confirmed + in_flight,
            "predictions_confirmed": confirmed,
            "predictions_refused": 0,
            "predictions_in_flight": in_flight,
        },
    )
    payloads_file(status).write_bytes(payloads.to_bytes(8, "little"))


def _gateways(taken: dict[str, int]) -> dict[str, Any]:
    return {
        f: {"predictions_converted": n // 4, "predictions_suppressed": n - n // 4}
        for f, n in taken.items()
    }


def _checks(result: Reconciliation) -> dict[str, bool]:
    return {c["check"]: c["ok"] for c in result.checks}


def test_payloads_are_summed_over_the_processes_of_a_factory(tmp_path: Path) -> None:
    plan = Plan(work_dir=tmp_path)
    _predictor(plan, "F01", 10, 5, 700)
    _predictor(plan, "F01", 11, 5, 301)  # restarted: one payload redelivered, counted twice
    _predictor(plan, "F02", 12, 5, 1000)
    assert handled_payloads(plan.status_dir, "F01") == 1001
    assert handled_payloads(plan.status_dir, "F02") == 1000
    assert handled_payloads(plan.status_dir, "F03") == 0


def test_the_hop_is_exact_per_factory_and_at_least_across_a_kill(tmp_path: Path) -> None:
    plan = Plan(work_dir=tmp_path)
    _predictor(plan, "F01", 10, 400, 1000)
    # killed with predictions awaiting their PUBACK (its file sorts after the next one's)
    _predictor(plan, "F02", 831, 300, 500, in_flight=12, updated=1.0)
    _predictor(plan, "F02", 2098, 150, 500)  # the process after the kill -9
    result = Reconciliation()
    result.figures["gateways"] = _gateways({"F01": 400, "F02": 460})
    reconcile_predictions(plan, result)
    assert result.ok, result.checks
    hop = result.figures["readings"]["predictions"]["hop"]
    assert hop["F02"]["predictor_processes"] == 2
    assert hop["F02"]["confirmed_by_local_broker"] == 450

    assert not hop["F02"]["refused_by_local_broker"]

    # one prediction the broker took that the buffer never took fails the factory's check
    short = Reconciliation()
    short.figures["gateways"] = _gateways({"F01": 399, "F02": 449})
    reconcile_predictions(plan, short)
    failed = [name for name, ok in _checks(short).items() if not ok]
    assert len(failed) == 2
    assert failed[0].startswith("F01: predictions the local broker took")
    assert failed[1].startswith("F02: predictions the buffer took >=")
