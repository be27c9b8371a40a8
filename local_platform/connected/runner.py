"""The connected run: one platform on 127.0.0.1 where readings flow from sensors to the lake.

`run(plan, progress)` starts every server and process (each on 127.0.0.1, each stopped by its
PID at the end, also on an error or Ctrl-C), lands the fleet's history, starts the gateways and
then the sensors in accelerated time, keeps the lake running on its schedule, injects the
faults, waits until everything published has gone through, runs the lake a last time, stops
everything, and reconciles. The figures go to JSON files in the run directory.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iiot import topics
from local_platform.connected import aws, gateway, lake, late, maintenance, models, reconcile
from local_platform.connected.alert_quality import alert_quality as judge_alerts
from local_platform.connected.clock import SimClock
from local_platform.connected.influxd import InfluxServer, V2WriteRelay, start_influxd
from local_platform.connected.kinesis import aws_environment
from local_platform.connected.monitor import Monitor
from local_platform.connected.plan import Plan, Topology, read_json, write_json
from local_platform.connected.processes import ProcessError, Supervisor
from local_platform.connected.uplink import Uplinks
from local_platform.localbroker import Mosquitto, free_port

log = logging.getLogger(__name__)

Progress = Callable[[str, float, float], None]
FIGURES_FILE = "figures.json"
FAULTS_FILE = "faults.json"
# What a run directory holds that a new run replaces (other files under it are left alone).
RUN_OUTPUTS = (
    "gateways",
    "lake",
    "cloud",
    "stream",
    "status",
    "logs",
    "components",
    "plan.json",
    "topology.json",
    "pids.json",
    reconcile.RECONCILIATION_FILE,
    FIGURES_FILE,
    FAULTS_FILE,
    "ml",  # this run's models and alert quality
    "report.html",
    # derived from an earlier run's model, or written by the step-by-step demo
    # (`iiot demo --step`) into the same folder: the report would read them as this run's
    "whatif",
    "simulation",
    "edge",
    "quarantine.jsonl",
)
DRAIN_TIMEOUT_S = 120.0


def clear_outputs(run_dir: Path) -> None:
    """Remove what an earlier run left in `run_dir` (`RUN_OUTPUTS`), so the report and the
    reconciliation read only this run's files; anything else in the folder stays."""
    for name in RUN_OUTPUTS:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


class RunFailedError(RuntimeError):
    """The run could not complete; the message says where it stopped."""


class _InterruptedError(Exception):
    pass


@dataclass
class Run:
    plan: Plan
    progress: Progress
    supervisor: Supervisor = field(init=False)
    brokers: dict[str, Mosquitto] = field(default_factory=dict)
    uplinks: Uplinks | None = None
    monitor: Monitor | None = None
    schedule: lake.LakeSchedule | None = None
    clock: SimClock | None = None
    topology: Topology | None = None
    env: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    faults: list[dict[str, Any]] = field(default_factory=list)
    influx: InfluxServer | None = None
    relay: V2WriteRelay | None = None
    resources: aws.CloudResources | None = None
    drained_at: float = 0.0
    live_ended_wall: float = 0.0
    model_figures: list[dict[str, Any]] = field(default_factory=list)
    anomaly_model_figures: list[dict[str, Any]] = field(default_factory=list)
    calibration_figures: dict[str, Any] = field(default_factory=dict)
    cmms: tuple[list[dict[str, Any]], list[dict[str, Any]]] = ([], [])
    cmms_fed_ms: int = 0

    def __post_init__(self) -> None:
        self.supervisor = Supervisor(self.plan.run_dir)

    # ------------------------------------------------------------------------- helpers

    def _python(self, module: str, *args: str) -> list[str]:
        return [sys.executable, "-m", module, "--plan", str(self.plan.run_dir / "plan.json"), *args]

    @contextlib.contextmanager
    def _timed(self, name: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(time.perf_counter() - began, 2)

    # --------------------------------------------------------------------------- setup

    def setup(self) -> None:
        plan = self.plan
        Supervisor(plan.run_dir).reap_leftovers() if (plan.run_dir / "pids.json").exists() else None
        clear_outputs(plan.run_dir)
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        plan.status_dir.mkdir(parents=True, exist_ok=True)
        plan.landing_dir.mkdir(parents=True, exist_ok=True)
        self.supervisor = Supervisor(plan.run_dir)
        plan.write()
        steps = 6
        self.progress("setting up the platform", 0, steps)

        # AWS APIs: moto in server mode
        moto_port = free_port()
        self.supervisor.start(
            "moto",
            aws.moto_command(moto_port),
            ready=lambda: aws.listening(moto_port),
            ready_timeout_s=60,
        )
        self.env = aws_environment(moto_port)
        with _environment(self.env):
            resources = self.resources = aws.create_resources()
        write_json(plan.cloud_dir / "resources.json", resources.as_dict())
        # The time-series database: a real influxd, and the v2 write API in front of it
        influx_root = plan.cloud_dir / "influxd"
        influx_root.mkdir(parents=True, exist_ok=True)
        self.influx = start_influxd(influx_root)
        self.influx.query(f'CREATE DATABASE "{aws.INFLUX_BUCKET}"')
        self.relay = V2WriteRelay(self.influx.url)
        self.relay.keep_lines = False
        self.progress("setting up the platform", 1, steps)

        # Brokers: IoT Core, and each factory's own; each factory's uplink to IoT Core
        self.brokers["cloud"] = Mosquitto.create(persistent=True, log_subscriptions=True)
        self.uplinks = Uplinks(self.brokers["cloud"].port)
        for factory in plan.factory_ids:
            self.brokers[factory] = Mosquitto.create(persistent=True, log_subscriptions=True)
            self.uplinks.add(factory)
        self.uplinks.start()
        self.topology = Topology(
            cloud_broker=self.brokers["cloud"].port,
            input_brokers={f: self.brokers[f].port for f in plan.factory_ids},
            uplinks={f: u.port for f, u in self.uplinks.uplinks.items()},
            moto=moto_port,
            influx=self.relay.url,
            influx_query=self.influx.url,
        )
        self.topology.write(plan.run_dir)
        self.progress("setting up the platform", 2, steps)

        # The cloud: IoT rules, the delivery stream
        cloud = self.brokers["cloud"]
        self.supervisor.start(
            "iot-rules",
            self._python(
                "local_platform.connected.ingress",
                "--machine-state-table",
                resources.router_machine_state_table,
            ),
            env=self.env,
            ready=lambda: cloud.subscribed("iot-rules", topics.ANOMALIES),
        )
        self.supervisor.start(
            "firehose",
            self._python("local_platform.connected.firehose"),
            env=self.env,
            ready=lambda: (plan.status_dir / "firehose.json").exists(),
        )
        self._start_functions()
        self._start_stream_rules()
        self.progress("setting up the platform", 3, steps)

        # The lake's past
        with self._timed("history landed"):
            history = lake.land_history(
                plan, lambda done, total: self.progress("landing the lake's history", done, total)
            )
        write_json(plan.cloud_dir / "history.json", history)
        self.schedule = lake.LakeSchedule(
            plan.lake_dir, self.supervisor.log_dir, plan.live_start_ms, plan.lake_every_s
        )
        with self._timed("lake: first run (history)"):
            first = self.schedule.run_once()
        if first.exit_code != 0:
            raise RunFailedError(f"the first lake run failed; see {first.log}")
        self.progress("setting up the platform", 4, steps)

        # The maintenance system's past, and the first model from the lake
        jobs, failures, machines = maintenance.schedule(plan)
        self.cmms = (jobs, failures)
        self.cmms_fed_ms = plan.live_start_ms
        past_jobs = [j for j in jobs if int(j["completed_at_ms"]) <= plan.live_start_ms]
        maintenance.land(
            plan,
            past_jobs,
            [f for f in failures if int(f["repaired_at_ms"]) <= plan.live_start_ms],
        )
        self._tell_cloud(past_jobs)  # the machine state the alert router starts from
        for factory in plan.factory_ids:
            write_json(
                plan.gateway_dir(factory) / "machines.json",
                {
                    m.machine_id: {"model": m.model, "installedOn": m.installed_on}
                    for m in machines
                    if m.factory_id == factory
                },
            )
        # The stream rules: rapid-change limits learned from the lake's history, then the job
        self._calibrate_rules()
        self._start_flink(self.calibration_figures.get("sql_dir"))
        if plan.model_lifecycle:
            self.progress("model v1: lake -> features -> train -> gate -> compile", 0, 1)
            with self._timed("model v1 (lifecycle)"):
                try:
                    first_model = models.lifecycle(
                        plan, 1, plan.live_start_ms - plan.model_lag_hours * 3_600_000
                    )
                except models.LifecycleError as error:  # reported; the run goes on without
                    first_model = {"published": False, "error": str(error)}
            self.model_figures.append(first_model)
            if first_model.get("published"):
                for factory in plan.factory_ids:
                    models.deploy(plan, factory, Path(first_model["store"]))
            self.progress("model v1: lake -> features -> train -> gate -> compile", 1, 1)
            if first_model.get("published"):
                self.progress("model v2: the whole history, published for a mid-run swap", 0, 1)
                with self._timed("model v2 (lifecycle)"):
                    try:
                        second = models.lifecycle(plan, 2, plan.live_start_ms)
                    except models.LifecycleError as error:
                        second = {"published": False, "error": str(error)}
                self.model_figures.append(second)
                self.progress("model v2: the whole history, published for a mid-run swap", 1, 1)
            self._anomaly_model_lifecycle()

        # The gateways
        for factory in plan.factory_ids:
            self._start_gateway(factory)
            if self._predictors:
                self._start_predictor(factory)
        self.monitor = Monitor({f: self.brokers[f].port for f in plan.factory_ids})
        self.monitor.start()
        self.progress("setting up the platform", 6, steps)

    @property
    def _predictors(self) -> bool:
        """The gateways run a FailurePredictor once either of its models is deployed."""
        return self.plan.model_lifecycle and any(
            m.get("published") for m in (self.model_figures[:1] + self.anomaly_model_figures[:1])
        )

    def _calibrate_rules(self) -> None:
        """The rapid-change limits per series from the lake's normal operation before the live
        start (`models.calibrate_rules`), rendered into the SQL the run's Flink job runs. Without
        a history to learn from (or when learning fails) the job runs the catalog's SQL."""
        plan = self.plan
        if plan.history_hours <= 0:
            self.calibration_figures = {"calibrated": False, "reason": "no history"}
            return
        self.progress("stream rules: limits learned from the lake", 0, 1)
        with self._timed("stream rules calibrated"):
            try:
                self.calibration_figures = models.calibrate_rules(plan)
            except models.LifecycleError as error:  # reported; the catalog's limits apply
                self.calibration_figures = {"calibrated": False, "error": str(error)}
        self.progress("stream rules: limits learned from the lake", 1, 1)

    def _anomaly_model_lifecycle(self) -> None:
        """The anomaly detector from the lake's whole history (normal operation only), published
        as AnomalyModel 1.0.1 and deployed to every gateway before it starts."""
        plan = self.plan
        title = "anomaly model: lake (normal operation) -> train -> publish"
        self.progress(title, 0, 1)
        with self._timed("anomaly model v1 (lifecycle)"):
            try:
                figures = models.anomaly_lifecycle(plan, 1, plan.live_start_ms)
            except models.LifecycleError as error:  # reported; the predictors run without it
                figures = {"published": False, "error": str(error)}
        self.anomaly_model_figures.append(figures)
        if figures.get("published"):
            for factory in plan.factory_ids:
                models.deploy(plan, factory, Path(figures["store"]), models.ANOMALY_MODEL)
            figures["deployed_wall"] = time.time()
        self.progress(title, 1, 1)

    def _start_functions(self) -> None:
        """The two Lambda functions on their event source mappings (as the stacks configure
        them: batch 100, retries 3 and 5, an SQS on-failure destination)."""
        plan, resources = self.plan, self.resources
        assert resources is not None
        assert self.relay is not None
        writer_env = {
            **self.env,
            "INFLUXDB_URL": self.relay.url,
            "INFLUXDB_ORG": aws.INFLUX_ORG,
            "INFLUXDB_BUCKET": aws.INFLUX_BUCKET,
            "INFLUXDB_SECRET_ARN": resources.influx_secret_arn,
            "IDEMPOTENCY_TABLE": resources.writer_idempotency_table,
            "DEAD_LETTER_QUEUE_URL": resources.writer_dead_letters,
            "POWERTOOLS_SERVICE_NAME": "influx-writer",
            # No READINGS_STREAM_NAME: the stream rules read the telemetry on their own, so a
            # stopped InfluxDB does not stop them.
        }
        router_env = {
            **self.env,
            "ALERT_TOPIC_ARN": resources.alert_topic,
            "ESCALATION_TOPIC_ARN": resources.escalation_topic,
            "COOLDOWN_TABLE": resources.router_cooldown_table,
            "IDEMPOTENCY_TABLE": resources.router_idempotency_table,
            "DEAD_LETTER_QUEUE_URL": resources.router_dead_letters,
            "COOLDOWN_SECONDS": "900",
            "MACHINE_STATE_TABLE": resources.router_machine_state_table,
            "POWERTOOLS_SERVICE_NAME": "alert-router",
        }
        for function, stream, retries, on_failure, env, timeout in (
            (
                "influx_writer",
                resources.telemetry_stream,
                3,
                resources.writer_on_failure,
                writer_env,
                60,
            ),
            (
                "alert_router",
                resources.anomaly_stream,
                5,
                resources.router_on_failure,
                router_env,
                30,
            ),
        ):
            self.supervisor.start(
                f"lambda-{function}",
                self._python(
                    "local_platform.connected.event_source",
                    "--function",
                    function,
                    "--stream",
                    stream,
                    "--retry-attempts",
                    str(retries),
                    "--on-failure",
                    on_failure,
                    "--timeout-s",
                    str(timeout),
                    *(
                        ["--ledger", str(plan.cloud_dir / "anomaly-stream-records.jsonl")]
                        if function == "alert_router"
                        else []
                    ),
                ),
                env=env,
                ready=_exists(plan.status_dir / f"lambda-{function}.json"),
            )

    def _start_stream_rules(self) -> None:
        """The rules' feed (a consumer of the telemetry stream); the Flink SQL job that reads
        what it writes starts once the rules are calibrated on the lake (`_start_flink`)."""
        from kda_sql.flink_env import ensure_flink_env

        plan = self.plan
        ensure_flink_env()  # made once, before anything else waits on it
        (plan.stream_dir / "readings").mkdir(parents=True, exist_ok=True)
        (plan.stream_dir / "anomalies").mkdir(parents=True, exist_ok=True)
        (plan.stream_dir / "late" / "readings").mkdir(parents=True, exist_ok=True)
        (plan.stream_dir / "late" / "anomalies").mkdir(parents=True, exist_ok=True)
        self.supervisor.start(
            "stream-feed",
            self._python("local_platform.connected.stream"),
            env=self.env,
            ready=_exists(plan.status_dir / "stream.json"),
        )

    def _start_flink(self, sql_dir: str | None) -> None:
        """The Flink SQL job on PyFlink (the live rules and, as its second job, the late data's
        batch evaluation), with the rendered rules of `sql_dir` (calibrated) or the catalog's."""
        from kda_sql.flink_env import ensure_flink_env

        plan = self.plan
        python = ensure_flink_env()
        self.supervisor.start(
            "flink",
            [
                str(python),
                str(Path(__file__).with_name("flink_job.py")),
                "--source",
                str(plan.stream_dir / "readings"),
                "--sink",
                str(plan.stream_dir / "anomalies"),
                "--watermark-delay-s",
                "5",  # the deployed application's (kda_sql.runner DEFAULTS)
                "--late-source",
                str(plan.stream_dir / "late" / "readings"),
                "--late-sink",
                str(plan.stream_dir / "late" / "anomalies"),
                *(["--sql-dir", sql_dir] if sql_dir else []),
            ],
        )

    def _drain_stream(self, deadline: float) -> None:
        """End the rules' input (the end-of-stream row) and wait until the job's last
        anomalies are forwarded."""
        plan = self.plan
        feed = read_json(plan.status_dir / "stream.json", {})
        (plan.stream_dir / "finish").write_text("")
        self._wait_quiet("stream", lambda s: bool(s.get("finished")), deadline)
        self._wait_quiet("stream", lambda s: bool(s.get("sentinel_seen")), deadline)
        # Every open window closes once the job reads the end-of-stream row; its output is
        # committed at the next checkpoints.
        self.wait_for_output(plan.stream_dir / "anomalies", deadline)
        self._wait_quiet(
            "stream",
            lambda s: time.time() - float(s.get("last_activity", 0)) > 1.0,
            deadline,
        )
        del feed

    def wait_for_output(self, output: Path, deadline: float) -> None:
        """Until a Flink sink folder holds the sentinel's anomaly (`stream.end_of_stream_row`):
        everything before it is committed."""
        from local_platform.connected.stream import holds_sentinel

        while time.time() < deadline:
            if holds_sentinel(output):
                return
            self.supervisor.check(self._long_running())
            time.sleep(0.25)
        raise RunFailedError(f"the stream rules' output {output} did not end in time")

    def _start_predictor(self, factory: str) -> None:
        """The FailurePredictor; the maintenance system then tells it the completed jobs."""
        assert self.topology is not None
        plan, broker = self.plan, self.brokers[factory]
        name = f"failure-predictor-{factory}"
        self.supervisor.start(
            name,
            self._python(
                "local_platform.connected.gateway",
                "failure-predictor",
                "--factory",
                factory,
                "--broker",
                broker.url,
                "--cloud",
                f"mqtt://127.0.0.1:{self.topology.uplinks[factory]}",
                "--machines",
                str(plan.gateway_dir(factory) / "machines.json"),
            ),
            ready=lambda: broker.subscribed(name, f"factory/{factory}/maintenance"),
        )
        jobs = [
            j
            for j in self.cmms[0]
            if j["factory_id"] == factory and int(j["completed_at_ms"]) <= self.cmms_fed_ms
        ]
        self._tell_gateway(factory, jobs)

    def _tell_gateway(self, factory: str, jobs: list[dict[str, Any]]) -> None:
        if not jobs or not self.plan.model_lifecycle:
            return
        self._publish_jobs(self.brokers[factory].url, f"cmms-bridge-{factory}", jobs)

    def _tell_cloud(self, jobs: list[dict[str, Any]]) -> None:
        """Completed jobs to IoT Core, where the maintenance rule records them for the alert
        router (`ingress.py`)."""
        if jobs:
            self._publish_jobs(self.brokers["cloud"].url, "cmms-integration", jobs)

    @staticmethod
    def _publish_jobs(broker_url: str, client_id: str, jobs: list[dict[str, Any]]) -> None:
        from local_platform.publisher import MqttWriter

        writer = MqttWriter(broker_url, client_id)
        try:
            for job in jobs:
                writer.publish(
                    maintenance.topic(job["factory_id"]), maintenance.gateway_message(job)
                )
            writer.flush()
        finally:
            writer.close()

    def _feed_maintenance(self, now_sim: int) -> None:
        """Jobs and failures completed since the last call: to the lake, the gateways and IoT
        Core (the alert router's machine state)."""
        plan = self.plan
        jobs, failures = self.cmms
        done = maintenance.completed(jobs, "completed_at_ms", self.cmms_fed_ms, now_sim)
        repaired = maintenance.completed(failures, "repaired_at_ms", self.cmms_fed_ms, now_sim)
        self.cmms_fed_ms = now_sim
        maintenance.land(plan, done, repaired)
        self._tell_cloud(done)
        for factory in plan.factory_ids:
            self._tell_gateway(factory, [j for j in done if j["factory_id"] == factory])

    def _deploy_new_model(self, now_sim: int) -> None:
        """The published new version onto every running gateway (their predictors swap it
        in within their poll interval)."""
        figures = self.model_figures[-1]
        for factory in self.plan.factory_ids:
            models.deploy(self.plan, factory, Path(figures["store"]))
        figures["deployed_wall"] = time.time()
        figures["deployed_sim_ms"] = now_sim

    def _start_gateway(self, factory: str, *, wait: bool = True) -> None:
        assert self.topology is not None
        broker = self.brokers[factory]
        uplink = f"mqtt://127.0.0.1:{self.topology.uplinks[factory]}"
        readings = topics.readings_topic(factory)
        name = f"sensor-buffer-{factory}"
        if name in self.supervisor.processes:
            self.supervisor.restart(name)
        else:
            self.supervisor.start(
                name,
                self._python(
                    "local_platform.connected.gateway",
                    "sensor-buffer",
                    "--factory",
                    factory,
                    "--broker",
                    broker.url,
                    "--cloud",
                    uplink,
                ),
            )
        if wait:
            self.supervisor.wait_ready(
                name, lambda: broker.subscribed(f"sensor-buffer-{factory}", readings), 60
            )

    # ---------------------------------------------------------------------------- live

    def live(self) -> None:
        plan = self.plan
        assert self.schedule is not None
        self.clock = SimClock(plan.live_start_ms, time.time() + 1.5, plan.speed)
        write_json(
            plan.run_dir / "status" / "clock.json",
            {"start_ms": self.clock.start_ms, "wall0": self.clock.wall0, "speed": self.clock.speed},
        )
        for factory in plan.factory_ids:
            self.supervisor.start(
                f"sensors-{factory}",
                self._python(
                    "local_platform.connected.sensors",
                    "--factory",
                    factory,
                    "--broker",
                    self.brokers[factory].url,
                    *self.clock.as_args(),
                ),
                expect_exit=True,
            )
        self.schedule.start()
        swap_pending = plan.model_lifecycle and any(
            m.get("published") for m in self.model_figures[1:]
        )
        faults = _FaultSchedule(self) if plan.faults.enabled else None
        began = time.time()
        hours = plan.hours
        while True:
            if faults is not None:
                faults.tick()
            now_sim = self.clock.sim_ms()
            # The maintenance system's completed jobs, every simulated minute: the alert router
            # must know a machine is back in service before its start-up transients arrive.
            if now_sim - self.cmms_fed_ms >= 60_000:
                self._feed_maintenance(min(now_sim, plan.live_end_ms))
            if plan.model_lifecycle and swap_pending and now_sim >= plan.at(plan.model_swap_at):
                swap_pending = False
                self._deploy_new_model(now_sim)

            statuses = [
                read_json(plan.status_dir / f"sensors-{f}.json", {}) for f in plan.factory_ids
            ]
            done = all(s.get("done") for s in statuses)
            sim_now = min(int(s.get("last_event_ms", plan.live_start_ms)) for s in statuses)
            hours_done = max(0.0, (sim_now - plan.live_start_ms) / 3_600_000)
            if done:
                hours_done = hours
            self.progress("sensors: simulated hours published", min(hours_done, hours), hours)
            self._report_uploads()
            if done:
                break
            for factory in plan.factory_ids:
                process = self.supervisor.processes[f"sensors-{factory}"]
                if not process.running() and not read_json(
                    plan.status_dir / f"sensors-{factory}.json", {}
                ).get("done"):
                    raise RunFailedError(
                        f"the sensors of {factory} stopped early; see {process.log_path}:\n"
                        + process.tail()
                    )
            self.supervisor.check(self._long_running())
            if time.time() - began > plan.live_wall_s * 4 + 120:
                raise RunFailedError("the sensors did not finish in time")
            time.sleep(0.2)
        self.live_ended_wall = time.time()
        self.timings["live seconds"] = round(time.time() - self.clock.wall0, 2)
        if faults is not None:
            faults.finish()

    def _long_running(self) -> list[str]:
        return [
            name for name, process in self.supervisor.processes.items() if not process.expect_exit
        ]

    def _report_uploads(self) -> None:
        assert self.monitor is not None
        uploaded = 0
        for factory in self.plan.factory_ids:
            status, _ = self.monitor.status(factory)
            uploaded += int(status.get("readings_uploaded", 0))
        total = (
            self.plan.fleet.expected_readings
            * self.plan.hours
            / (self.plan.hours + self.plan.history_hours)
        )
        self.progress("gateways: readings uploaded to the cloud", min(uploaded, total), total)

    # --------------------------------------------------------------------------- drain

    def drain(self) -> None:
        """Wait until the gateways hold nothing and the cloud has taken everything."""
        plan = self.plan
        assert self.monitor is not None
        began = time.time()
        deadline = began + DRAIN_TIMEOUT_S
        stages = ["gateways", "iot rules", "delivery stream", "stream rules and functions"]
        self.progress("draining the pipeline", 0, len(stages))
        sensors = {
            f: read_json(plan.status_dir / f"sensors-{f}.json", {}) for f in plan.factory_ids
        }
        published = {f: int(s.get("readings", 0)) for f, s in sensors.items()}
        messages = {f: int(s.get("messages", 0)) for f, s in sensors.items()}
        stores = stores_predictions(plan)
        predictor_progress = -1
        pending: list[str] = []
        while time.time() < deadline:
            self._report_uploads()
            pending = []
            for factory in plan.factory_ids:
                status, at = self.monitor.status(factory)
                taken = int(status.get("readings_committed", 0)) + int(status.get("quarantined", 0))
                idle = (
                    status.get("backlog_readings") == 0
                    and status.get("outbox_batches") == 0
                    and status.get("anomalies_pending") == 0
                    and status.get("queue") == 0
                    and status.get("in_flight") == 0
                )
                if not (idle and taken >= published[factory] and time.time() - at < 3):
                    pending.append(factory)
            if self._predictors and any(reconcile.outbox_waiting(plan).values()):
                pending.append("predictor outboxes")
            if self._predictors:
                pending.extend(self._predictions_pending(messages, stores))
                # Under load a predictor lags the sensors: the drain waits while it moves on.
                handled = sum(
                    gateway.handled_payloads(plan.status_dir, f) for f in plan.factory_ids
                )
                if handled > predictor_progress:
                    predictor_progress = handled
                    deadline = max(deadline, time.time() + DRAIN_TIMEOUT_S)
            if not pending:
                break
            self.supervisor.check(self._long_running())
            time.sleep(0.25)
        else:
            raise RunFailedError(
                f"the gateways did not drain in {time.time() - began:.0f} s (nothing moved for "
                f"{DRAIN_TIMEOUT_S:.0f} s): still pending: {', '.join(pending)}"
            )
        self.progress("draining the pipeline", 1, len(stages))
        self._wait_quiet(
            "ingress",
            lambda s: time.time() - float(s.get("last_message", 0)) > 1.0,
            deadline,
        )
        self.progress("draining the pipeline", 2, len(stages))
        rules = read_json(plan.status_dir / "ingress.json", {})
        self._wait_quiet(
            "firehose",
            lambda s: (
                s.get("records", 0) >= rules.get("telemetry_messages", 0) - rules.get("errors", 0)
                and s.get("buffered_records", 1) == 0
            ),
            deadline,
        )
        self.progress("draining the pipeline", 3, len(stages))
        self._drain_stream(deadline)
        for function in ("influx_writer", "alert_router"):
            self._wait_quiet(
                f"lambda-{function}",
                lambda s: (
                    s.get("behind_ms", 1) == 0
                    and not s.get("pending", True)
                    and time.time() - float(s.get("last_activity", 0)) > 1.0
                ),
                deadline,
            )
        self._feed_maintenance(plan.live_end_ms)
        self.drained_at = time.time()
        self.progress("draining the pipeline", 4, len(stages))

    def _predictions_pending(self, messages: dict[str, int], stores: bool) -> list[str]:
        """The factories whose predictions are not all in the buffer yet: the predictor has not
        handled every readings payload the sensors sent (it may lag them under load), a
        prediction still waits for the local broker's PUBACK, or the buffer has not taken
        (stored, held back or quarantined) every prediction the broker took."""
        plan = self.plan
        assert self.monitor is not None
        pending = []
        for factory in plan.factory_ids:
            process = self.supervisor.processes.get(f"failure-predictor-{factory}")
            if process is None:
                continue
            current = read_json(plan.status_dir / f"predictor-{factory}-{process.pid}.json", {})
            statuses = reconcile.predictor_statuses(plan, factory)
            confirmed = sum(int(s.get("predictions_confirmed", 0)) for s in statuses)
            buffer, _ = self.monitor.status(factory)
            taken = sum(int(buffer.get(name, 0)) for name in reconcile.PREDICTIONS_TAKEN)
            own = gateway.payloads_file(plan.status_dir / f"predictor-{factory}-{process.pid}.json")
            handled_by_current = gateway.payload_count(own) if own.exists() else -1
            done = (
                gateway.handled_payloads(plan.status_dir, factory) >= messages[factory]
                # the status was written after the last payload was handled
                and current.get("readings_payloads") == handled_by_current
                and current.get("predictions_in_flight") == 0
                and time.time() - float(current.get("updated", 0)) < 3
                # (a buffer configured not to store them takes none)
                and (taken >= confirmed or not stores)
            )
            if not done:
                pending.append(f"predictions of {factory}")
        return pending

    def _wait_quiet(
        self, name: str, condition: Callable[[dict[str, Any]], bool], deadline: float
    ) -> None:
        path = self.plan.status_dir / f"{name}.json"
        while time.time() < deadline:
            status = read_json(path, {})
            if status and time.time() - float(status.get("updated", 0)) < 3 and condition(status):
                return
            self.supervisor.check(self._long_running())
            time.sleep(0.25)
        raise RunFailedError(f"{name} did not catch up within {DRAIN_TIMEOUT_S:.0f} s")

    # -------------------------------------------------------------------------- finish

    def finish(self) -> dict[str, Any]:
        plan = self.plan
        assert self.schedule is not None
        self.schedule.stop()
        self.progress("lake: final run (bronze, silver, gold)", 0, 1)
        with self._timed("lake: final run"):
            final = self.schedule.run_once()
        if final.exit_code != 0:
            raise RunFailedError(f"the final lake run failed; see {final.log}")
        self.progress("lake: final run (bronze, silver, gold)", 1, 1)
        # The gateways stop cleanly: their databases hold the final counters.
        for factory in plan.factory_ids:
            self.supervisor.stop(f"sensor-buffer-{factory}")
        late_figures: dict[str, Any] = {"evaluated": False}
        spans = read_json(plan.status_dir / "stream.json", {}).get("late_spans", {})
        if spans:
            self.progress("late data: the rules over the backlog (batch)", 0, 1)
            assert self.clock is not None
            with self._timed("late data evaluated"), _environment(self.env):
                late_figures = late.evaluate(
                    plan,
                    spans,
                    self.clock,
                    lambda folder: self.wait_for_output(folder, time.time() + DRAIN_TIMEOUT_S),
                )
            deadline = time.time() + DRAIN_TIMEOUT_S
            self._wait_quiet(
                "lambda-alert_router",
                lambda s: (
                    s.get("behind_ms", 1) == 0
                    and not s.get("pending", True)
                    and time.time() - float(s.get("last_activity", 0)) > 1.5
                ),
                deadline,
            )
            self.progress("late data: the rules over the backlog (batch)", 1, 1)
        self.supervisor.stop("flink")
        self.progress("reconciling", 0, 1)
        result = reconcile.Reconciliation()
        with self._timed("reconciliation"):
            reconcile.reconcile_readings(plan, result)
            if self._predictors and stores_predictions(plan):
                reconcile.reconcile_predictions(plan, result)
            result.figures["late_data"] = late_figures
            if plan.model_lifecycle:
                assert self.monitor is not None
                reconcile.reconcile_models(
                    plan,
                    result,
                    self.model_figures,
                    reconcile.predictions_by_version(plan),
                    self.live_ended_wall,
                    observed=self.monitor.predictions(),
                    anomaly_lifecycles=self.anomaly_model_figures,
                )
            assert self.influx is not None
            assert self.resources is not None
            with _environment(self.env):
                reconcile.reconcile_cloud(plan, result, self.influx, self.resources)
            if self._predictors:
                reconcile.reconcile_predictor_anomalies(plan, result)
            judge_alerts(plan, result)  # notifications and raw anomalies (alert_quality.py)
            assert self.clock is not None
            reconcile.reconcile_stream(plan, result, self.clock)
            result.figures["stream"]["calibration"] = self.calibration_figures
            if late_figures.get("evaluated"):
                result.check(
                    "anomalies on the replayed backlog = a run without the fault on the same "
                    "readings",
                    late_figures["anomalies_on_backlog"],
                    late_figures["anomalies_reference_run"],
                    note=f"{late_figures['missing_from_backlog']} missing, "
                    f"{late_figures['extra_on_backlog']} extra",
                )
                result.check(
                    "anomalies the live stream raised on the backlog are among them",
                    late_figures["live_on_backlog_also_found_late"],
                    True,
                )
            result.figures["late_data"] = late_figures
        result.figures["faults"] = self.faults
        result.figures["lake_runs"] = [
            {
                "seconds": round(r.finished - r.started, 2),
                "exit_code": r.exit_code,
                "silver_live_rows": r.silver_live_rows,
            }
            for r in self.schedule.runs
        ]
        document = reconcile.write(plan, result)
        write_json(plan.run_dir / FAULTS_FILE, self.faults)
        assert self.clock is not None
        live_rate = sum(
            int(read_json(plan.status_dir / f"sensors-{f}.json", {}).get("readings", 0))
            for f in plan.factory_ids
        )
        figures = {
            "readings_published": live_rate,
            "live_wall_s": self.timings.get("live seconds"),
            "readings_per_s_published": round(live_rate / self.timings["live seconds"])
            if self.timings.get("live seconds")
            else None,
            "sensor_to_alert_ms": document.get("alerts", {}).get("sensor_to_alert_ms"),
            "sensor_to_silver_s": lake.sensor_to_silver_s(
                self.schedule.runs, self.clock, plan.live_start_ms
            ),
        }
        document["platform"] = figures
        reconcile.write_document(plan, document)
        write_json(
            plan.run_dir / FIGURES_FILE,
            {
                "platform": figures,
                "plan": plan.to_json(),
                "speed": plan.speed,
                "timings_s": self.timings,
                "processes": self.supervisor.summary(),
                "gold": lake.gold_counts(plan.lake_dir),
            },
        )
        self.progress("reconciling", 1, 1)
        return document

    # ------------------------------------------------------------------------ teardown

    def teardown(self) -> None:
        if self.schedule is not None:
            self.schedule.terminate()
        if self.monitor is not None:
            with contextlib.suppress(Exception):
                self.monitor.stop()
        self.supervisor.stop_all()
        if self.relay is not None:
            self.relay.close()
        if self.influx is not None:
            self.influx.stop()
        if self.uplinks is not None:
            self.uplinks.stop()
        for broker in self.brokers.values():
            broker.close()


class _FaultSchedule:
    """The plan's faults, each started and ended when the simulated clock reaches its time,
    and recorded (simulated and wall times, what each did) in `Run.faults`."""

    def __init__(self, run: Run) -> None:
        assert run.clock is not None
        self.run = run
        plan = run.plan
        faults = plan.faults.resolved(plan.factories)
        self.clock = run.clock
        self.outage_factory = faults.outage_factory
        self.kill_factory = faults.kill_factory
        outage_start = plan.at(faults.outage_start_h)
        outage_end = plan.at(faults.outage_start_h + faults.outage_hours)
        self.events: list[tuple[float, str]] = sorted(
            [
                (self.clock.wall(outage_start), "outage-start"),
                (self.clock.wall(outage_end), "outage-end"),
                (self.clock.wall(plan.at(faults.kill_at_h)), "kill"),
                (self.clock.wall(plan.at(faults.kill_at_h)) + faults.kill_down_s, "restart"),
                (self.clock.wall(plan.at(faults.influx_stop_at_h)), "influx-stop"),
                (
                    self.clock.wall(plan.at(faults.influx_stop_at_h)) + faults.influx_down_s,
                    "influx-start",
                ),
            ]
        )
        self.records: dict[str, dict[str, Any]] = {}
        self.max_backlog = 0

    def _record(self, name: str, **values: Any) -> dict[str, Any]:
        record = self.records.setdefault(name, {"fault": name})
        record.update(values)
        return record

    def tick(self) -> None:
        now = time.time()
        if "outage" in self.records and "wall_end" not in self.records["outage"]:
            assert self.run.monitor is not None
            status, _ = self.run.monitor.status(self.outage_factory)
            self.max_backlog = max(self.max_backlog, int(status.get("backlog_readings", 0)))
        while self.events and self.events[0][0] <= now:
            _, event = self.events.pop(0)
            self._do(event, now)

    def _do(self, event: str, now: float) -> None:
        run = self.run
        sim = self.clock.sim_ms(now)
        if event == "outage-start":
            assert run.uplinks is not None
            run.uplinks.down(self.outage_factory)
            self._record(
                "outage",
                description=f"{self.outage_factory}'s uplink to IoT Core down",
                factory=self.outage_factory,
                sim_start_ms=sim,
                wall_start=now,
            )
        elif event == "outage-end":
            assert run.uplinks is not None
            run.uplinks.restore(self.outage_factory)
            uplink = run.uplinks.uplinks[self.outage_factory]
            self._record(
                "outage",
                sim_end_ms=sim,
                wall_end=now,
                simulated_hours=round((sim - self.records["outage"]["sim_start_ms"]) / 3.6e6, 2),
                connections_refused=uplink.refused,
                max_backlog_readings=self.max_backlog,
            )
        elif event == "kill":
            killed = []
            for name in (
                f"sensor-buffer-{self.kill_factory}",
                f"failure-predictor-{self.kill_factory}",
            ):
                if name in run.supervisor.processes and run.supervisor.processes[name].running():
                    pid = run.supervisor.processes[name].pid
                    run.supervisor.kill(name)
                    killed.append({"process": name, "pid": pid})
            self._record(
                "kill",
                description=f"gateway {self.kill_factory} killed with SIGKILL, then restarted",
                factory=self.kill_factory,
                sim_ms=sim,
                wall=now,
                killed=killed,
            )
        elif event == "restart":
            run._start_gateway(self.kill_factory, wait=False)
            if f"failure-predictor-{self.kill_factory}" in run.supervisor.processes:
                run.supervisor.restart(f"failure-predictor-{self.kill_factory}")
            self._record(
                "kill", restarted_wall=now, down_s=round(now - self.records["kill"]["wall"], 2)
            )
        elif event == "influx-stop":
            assert run.influx is not None
            run.influx.stop()
            self._record(
                "influxdb",
                description="influxd stopped, then started again",
                sim_start_ms=sim,
                wall_start=now,
            )
        elif event == "influx-start":
            assert run.influx is not None
            run.influx.restart()
            self._record(
                "influxdb",
                wall_end=time.time(),
                down_s=round(time.time() - now + (now - self.records["influxdb"]["wall_start"]), 2),
            )
        run.faults[:] = list(self.records.values())

    def finish(self) -> None:
        """Anything still pending when the sensors are done happens now (short runs)."""
        now = time.time()
        while self.events:
            _, event = self.events.pop(0)
            self._do(event, now)
        relay = self.run.relay
        if relay is not None and "influxdb" in self.records:
            self._record("influxdb", writes_refused_while_down=relay.unavailable)
        self.run.faults[:] = list(self.records.values())


def stores_predictions(plan: Plan) -> bool:
    """Whether the gateways' SensorBuffers store the predictions (storePredictions): one
    setting for the run, refused when the factories' configurations disagree (the drain and the
    reconciliation count the predictions one way for every gateway)."""
    settings = {
        bool(
            gateway.component_configuration("sensor-buffer", plan, f).get("storePredictions", True)
        )
        for f in plan.factory_ids
    }
    if len(settings) != 1:
        raise ValueError("the gateways disagree on storePredictions: one setting per run")
    return settings.pop()


def _exists(path: Path) -> Callable[[], bool]:
    return path.exists


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    import os

    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run(plan: Plan, progress: Progress | None = None) -> dict[str, Any]:
    """The whole connected run; returns the reconciliation (also in the run directory)."""
    progress = progress or (lambda _d, _n, _t: None)
    state = Run(plan, progress)

    def terminate(_signum: int, _frame: Any) -> None:
        raise _InterruptedError

    previous = signal.signal(signal.SIGTERM, terminate)
    began = time.perf_counter()
    try:
        state.setup()
        state.live()
        state.drain()
        document = state.finish()
    except (_InterruptedError, KeyboardInterrupt):
        raise RunFailedError("interrupted; every process was stopped") from None
    except ProcessError as error:
        raise RunFailedError(str(error)) from error
    finally:
        state.teardown()
        signal.signal(signal.SIGTERM, previous)
    document["seconds"] = round(time.perf_counter() - began, 1)
    document["timings_s"] = state.timings
    return document
