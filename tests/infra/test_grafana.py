"""Managed Grafana from CDK (stacks/grafana_stack.py) and its deploy-time provisioning.

The stack: the workspace, its network path to this environment's InfluxDB, its sign-in from
typed config, the data sources and every generated dashboard, the roles' grants, cdk-nag.

The provisioning handlers run for real against local stand-ins: Grafana itself cannot be
installed here (AGPL-licensed, in no package list this project may use), so a small HTTP
server implements the Grafana HTTP API calls the handler makes with their documented request
and response shapes (`POST /api/datasources` -> 409 when it exists -> `PUT
/api/datasources/uid/<uid>`; `POST /api/dashboards/db`; the two deletes), and another the
InfluxDB v2 API calls of the token handler (sign-in, buckets, authorizations); Secrets Manager
is moto's, and the Managed Grafana API (service accounts and their tokens, which moto lacks)
is botocore's Stubber: the real client, its request validation included.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_cdk.assertions import Match, Template
from botocore.stub import ANY, Stubber
from moto import mock_aws
from syrupy.assertion import SnapshotAssertion
from syrupy.extensions.json import JSONSnapshotExtension

from local_platform.connected.local_http import LocalHttpServer
from stacks.constructs.grafana_handlers import influx_token, provision
from stacks.grafana_stack import DASHBOARDS, INFLUX_DATA_SOURCE_UID
from tests.infra.conftest import ENVIRONMENTS, Synth
from tests.infra.test_snapshots import masked

REGION = "eu-west-1"


def _resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: r for k, r in template["Resources"].items() if r["Type"] == kind}


def _text(value: Any) -> str:
    """A property as text (Fn::Join flattened), each reference shown as `<import:name>`,
    `<ref:id>` or `<getatt:id.attribute>`."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return separator.join(_text(part) for part in parts)
    if isinstance(value, dict) and "Fn::ImportValue" in value:
        return f"<import:{value['Fn::ImportValue']}>"
    if isinstance(value, dict) and "Ref" in value:
        return f"<ref:{value['Ref']}>"
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        return "<getatt:{}.{}>".format(*value["Fn::GetAtt"])
    return json.dumps(value)


# --- the stack -----------------------------------------------------------------------------


def test_the_workspace_signs_in_with_identity_center_and_reads_through_its_own_role(
    synth: Synth,
) -> None:
    template = Template.from_json(synth.template("dev", "grafana"))
    template.has_resource_properties(
        "AWS::Grafana::Workspace",
        {
            "AccountAccessType": "CURRENT_ACCOUNT",
            "AuthenticationProviders": ["AWS_SSO"],
            "PermissionType": "CUSTOMER_MANAGED",
            "RoleArn": {"Fn::GetAtt": [Match.string_like_regexp("WorkspaceRole"), "Arn"]},
            "PluginAdminEnabled": False,
            "GrafanaVersion": "10.4",
        },
    )


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_the_workspace_reaches_only_this_environments_influxdb(synth: Synth, env: str) -> None:
    grafana = synth.template(env, "grafana")
    (workspace,) = _resources(grafana, "AWS::Grafana::Workspace").values()
    vpc = workspace["Properties"]["VpcConfiguration"]
    subnets = [_text(subnet) for subnet in vpc["SubnetIds"]]
    assert len(subnets) == 3
    assert all(s.startswith(f"<import:iiot-{env}-network:") for s in subnets), subnets
    (group_ref,) = vpc["SecurityGroupIds"]
    group = group_ref["Fn::GetAtt"][0]
    egress = [
        r["Properties"]
        for r in _resources(grafana, "AWS::EC2::SecurityGroupEgress").values()
        if r["Properties"]["GroupId"] == {"Fn::GetAtt": [group, "GroupId"]}
    ]
    assert [(e["FromPort"], e["ToPort"], e["IpProtocol"]) for e in egress] == [(8086, 8086, "tcp")]
    assert "InfluxSecurityGroup" in _text(egress[0]["DestinationSecurityGroupId"])
    assert f"iiot-{env}-timeseries" in _text(egress[0]["DestinationSecurityGroupId"])
    # The instance's group admits the workspace on the API port (the rule is in this stack).
    ingress = [
        r["Properties"]
        for r in _resources(grafana, "AWS::EC2::SecurityGroupIngress").values()
        if r["Properties"]["SourceSecurityGroupId"] == {"Fn::GetAtt": [group, "GroupId"]}
    ]
    assert [(i["FromPort"], i["ToPort"]) for i in ingress] == [(8086, 8086)]
    assert f"iiot-{env}-timeseries" in _text(ingress[0]["GroupId"])


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_the_influx_data_source_points_at_this_environments_instance(
    synth: Synth, env: str
) -> None:
    grafana = synth.template(env, "grafana")
    sources = {
        json.loads(_text(r["Properties"]["DataSource"]))["uid"]: r["Properties"]
        for r in _resources(grafana, "Custom::GrafanaDataSource").values()
    }
    influx = sources[INFLUX_DATA_SOURCE_UID]
    spec = json.loads(_text(influx["DataSource"]))
    # https://<this environment's instance endpoint>:8086, exported by its time-series stack.
    assert spec["url"].startswith(f"https://<import:iiot-{env}-timeseries:")
    assert "GetAttInfluxEndpoint" in spec["url"]
    assert spec["url"].endswith(":8086")
    assert spec["type"] == "influxdb"
    assert spec["jsonData"] == {
        "version": "Flux",
        "organization": "iiot",
        "defaultBucket": "telemetry",
        "httpMode": "POST",
    }
    # No secret in the template: the token comes from this stack's secret at deploy time.
    assert "secureJsonData" not in spec
    assert influx["TokenSecretArn"] == {
        "Ref": next(iter(_resources(grafana, "AWS::SecretsManager::Secret")))
    }
    redshift = json.loads(_text(sources["iiot-redshift"]["DataSource"]))
    assert redshift["jsonData"]["workgroupName"] == f"iiot-{env}-warehouse"
    assert redshift["jsonData"]["authType"] == "ec2_iam_role"


def test_every_generated_dashboard_is_provisioned(synth: Synth) -> None:
    grafana = synth.template("dev", "grafana")
    provisioned = {
        r["Properties"]["Source"]: json.loads(r["Properties"]["Dashboard"])
        for r in _resources(grafana, "Custom::GrafanaDashboard").values()
    }
    files = sorted(DASHBOARDS.glob("*.json"))
    assert len(files) >= 2
    assert provisioned == {f"dashboards/{f.name}": json.loads(f.read_text()) for f in files}
    for resource in _resources(grafana, "Custom::GrafanaDashboard").values():
        # After the data sources, signed in as the provisioning service account.
        assert set(resource["DependsOn"]) >= {"InfluxDataSource", "RedshiftDataSource"}
        assert resource["Properties"]["ServiceAccountId"] == {
            "Fn::GetAtt": ["ServiceAccount", "Id"]
        }


def _policy_statements(template: dict[str, Any], role_prefix: str) -> list[dict[str, Any]]:
    found = []
    for policy in _resources(template, "AWS::IAM::Policy").values():
        roles = [r["Ref"] for r in policy["Properties"]["Roles"]]
        if any(r.startswith(role_prefix) for r in roles):
            found += policy["Properties"]["PolicyDocument"]["Statement"]
    return found


def _actions(statement: dict[str, Any]) -> set[str]:
    action = statement["Action"]
    return set(action if isinstance(action, list) else [action])


def test_the_workspace_role_may_only_query_this_warehouse(synth: Synth) -> None:
    grafana = synth.template("dev", "grafana")
    (role,) = [
        r for k, r in _resources(grafana, "AWS::IAM::Role").items() if k.startswith("WorkspaceRole")
    ]
    trust = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert [s["Principal"] for s in trust] == [{"Service": "grafana.amazonaws.com"}]
    assert trust[0]["Condition"] == {
        "StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    }
    assert "ManagedPolicyArns" not in role["Properties"]
    statements = _policy_statements(grafana, "WorkspaceRole")
    by_resource = {_text(s["Resource"]): _actions(s) for s in statements}
    (workgroup,) = [r for r in by_resource if r != "*"]
    assert "iiot-dev-warehouse" in workgroup
    assert by_resource[workgroup] == {
        "redshift-serverless:GetCredentials",
        "redshift-data:ExecuteStatement",
        "redshift-data:ListDatabases",
        "redshift-data:ListSchemas",
        "redshift-data:ListTables",
        "redshift-data:DescribeTable",
    }
    assert by_resource["*"] == {
        "redshift-data:DescribeStatement",
        "redshift-data:GetStatementResult",
        "redshift-data:CancelStatement",
    }


def test_the_handlers_roles_reach_only_their_workspace_and_secrets(synth: Synth) -> None:
    grafana = synth.template("dev", "grafana")
    provisioning = _policy_statements(grafana, "ProvisionRole")
    grafana_calls = [s for s in provisioning if any(a.startswith("grafana:") for a in _actions(s))]
    assert len(grafana_calls) == 1
    assert _actions(grafana_calls[0]) == {
        "grafana:CreateWorkspaceServiceAccount",
        "grafana:DeleteWorkspaceServiceAccount",
        "grafana:CreateWorkspaceServiceAccountToken",
        "grafana:DeleteWorkspaceServiceAccountToken",
    }
    assert _text(grafana_calls[0]["Resource"]).endswith(":/workspaces/<getatt:Workspace.Id>")
    token_secret = next(iter(_resources(grafana, "AWS::SecretsManager::Secret")))
    reads = [s for s in provisioning if "secretsmanager:GetSecretValue" in _actions(s)]
    assert [s["Resource"] for s in reads] == [{"Ref": token_secret}]
    assert not any("secretsmanager:PutSecretValue" in _actions(s) for s in provisioning)
    token = _policy_statements(grafana, "TokenRole")
    writes = [s for s in token if "secretsmanager:PutSecretValue" in _actions(s)]
    assert [s["Resource"] for s in writes] == [{"Ref": token_secret}]
    admin_reads = [s for s in token if "secretsmanager:GetSecretValue" in _actions(s)]
    assert ["InfluxCredentials" in _text(s["Resource"]) for s in admin_reads] == [True]


def test_cdk_nag_finds_nothing_unacknowledged_in_the_grafana_stacks(synth: Synth) -> None:
    report = synth.validation_report() or {}
    findings = [
        f"{violation['ruleName']} at {construct['constructPath']}"
        for plugin in report.get("pluginReports", [])
        for violation in plugin["violations"]
        for construct in violation["violatingConstructs"]
        if "/grafana/" in construct["constructPath"]
    ]
    assert findings == []
    acknowledged = {
        path: entries
        for path, entries in synth.metadata().items()
        if "/grafana/" in path and any(e["type"] == "aws:cdk:acknowledged-rules" for e in entries)
    }
    assert acknowledged, "the read token's rotation and the Data API wildcard are acknowledged"


def test_grafana_stack_snapshot(synth: Synth, snapshot: SnapshotAssertion) -> None:
    assert masked(synth.template("dev", "grafana")) == snapshot.use_extension(JSONSnapshotExtension)


def test_saml_sign_in_comes_from_the_environments_config() -> None:
    from config.environments import ConfigError, environments

    url = "https://idp.example.com/saml/metadata"
    configs = environments({"prod:grafana_saml_metadata_url": url})
    assert configs["prod"].grafana_saml_metadata_url == url
    assert configs["dev"].grafana_saml_metadata_url is None
    with pytest.raises(ConfigError, match=r"grafana_saml_metadata_url .* not an https:// URL"):
        environments({"prod:grafana_saml_metadata_url": "http://idp.example.com/metadata"})
    template = _grafana_stack_alone(configs["prod"])
    template.has_resource_properties(
        "AWS::Grafana::Workspace",
        {
            "AuthenticationProviders": ["SAML"],
            "SamlConfiguration": {
                "IdpMetadata": {"Url": url},
                "AssertionAttributes": Match.object_like({"Role": "role"}),
                "RoleValues": {"Admin": ["grafana-admin"], "Editor": ["grafana-editor"]},
            },
        },
    )


def _grafana_stack_alone(env_config: Any) -> Template:
    """The Grafana stack of `env_config` beside a minimal stand-in of what it reads."""
    import aws_cdk as cdk
    from aws_cdk import aws_ec2 as ec2
    from aws_cdk import aws_kms as kms
    from aws_cdk import aws_redshiftserverless as redshift
    from aws_cdk import aws_secretsmanager as secretsmanager

    from stacks.grafana_stack import DashboardSources, GrafanaStack

    app = cdk.App()
    base = cdk.Stack(app, "base")
    vpc = ec2.Vpc(
        base,
        "Vpc",
        max_azs=3,
        nat_gateways=0,
        subnet_configuration=[
            ec2.SubnetConfiguration(name="data", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)
        ],
    )
    key = kms.Key(base, "Key")
    sources = DashboardSources(
        influx_url="https://influx.example:8086",
        influx_security_group=ec2.SecurityGroup(base, "Influx", vpc=vpc),
        influx_admin_secret=secretsmanager.Secret(base, "Admin", encryption_key=key),
        influx_admin_secret_key=key,
        warehouse=redshift.CfnWorkgroup(base, "Workgroup", workgroup_name="w"),
    )
    stack = GrafanaStack(
        app,
        "grafana",
        env_config=env_config,
        vpc=vpc,
        subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED),
        sources=sources,
    )
    return Template.from_stack(stack)


# --- the provisioning handler against a stand-in Grafana HTTP API ---------------------------


class GrafanaApi:
    """The Grafana HTTP API calls the handler makes, as Grafana documents their bodies and
    answers: bearer-token auth, data sources by uid and name, dashboards by uid."""

    def __init__(self) -> None:
        self.valid_tokens: set[str] = set()
        self.data_sources: dict[str, dict[str, Any]] = {}
        self.dashboards: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length)) if length else None
                api.requests.append((self.command, self.path))
                token = self.headers.get("Authorization", "").removeprefix("Bearer ")
                if token not in api.valid_tokens:
                    return self._answer(401, {"message": "invalid API key"})
                status, answer = api.route(self.command, self.path, body)
                return self._answer(status, answer)

            do_GET = do_POST = do_PUT = do_DELETE = _handle  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self._http = LocalHttpServer(Handler)
        self.url = self._http.url

    def close(self) -> None:
        self._http.close()

    def route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if (method, path) == ("POST", "/api/datasources"):
            missing = [k for k in ("name", "type", "access") if not body.get(k)]
            if missing:
                return 400, {"message": f"Required fields missing: {missing}"}
            if body["uid"] in self.data_sources or any(
                d["name"] == body["name"] for d in self.data_sources.values()
            ):
                return 409, {"message": "data source with the same name already exists"}
            return 200, self._store_data_source(body, "Datasource added")
        if path.startswith("/api/datasources/uid/"):
            uid = path.rsplit("/", 1)[-1]
            if uid not in self.data_sources:
                return 404, {"message": "Data source not found"}
            if method == "PUT":
                return 200, self._store_data_source(body, "Datasource updated")
            if method == "DELETE":
                stored = self.data_sources.pop(uid)
                return 200, {"message": "Data source deleted", "id": stored["id"]}
        if (method, path) == ("POST", "/api/dashboards/db"):
            dashboard = body["dashboard"]
            current = self.dashboards.get(dashboard["uid"])
            if current is not None and not body.get("overwrite"):
                return 412, {"status": "version-mismatch", "message": "dashboard changed"}
            version = (current["version"] + 1) if current else 1
            slug = dashboard["title"].lower().replace(" ", "-")
            self.dashboards[dashboard["uid"]] = {**dashboard, "version": version}
            return 200, {
                "id": len(self.dashboards),
                "uid": dashboard["uid"],
                "url": f"/d/{dashboard['uid']}/{slug}",
                "status": "success",
                "version": version,
                "slug": slug,
            }
        if method == "DELETE" and path.startswith("/api/dashboards/uid/"):
            uid = path.rsplit("/", 1)[-1]
            if uid not in self.dashboards:
                return 404, {"message": "Dashboard not found"}
            title = self.dashboards.pop(uid)["title"]
            return 200, {"title": title, "message": f"Dashboard {title} deleted", "id": 1}
        return 404, {"message": "Not found"}

    def _store_data_source(self, body: dict[str, Any], message: str) -> dict[str, Any]:
        previous = self.data_sources.get(body["uid"], {})
        stored = {**body, "id": previous.get("id", len(self.data_sources) + 1)}
        self.data_sources[body["uid"]] = stored
        shown = {k: v for k, v in stored.items() if k != "secureJsonData"}
        shown["secureJsonFields"] = dict.fromkeys(body.get("secureJsonData", {}), True)
        return {"datasource": shown, "id": stored["id"], "message": message, "name": body["name"]}


@pytest.fixture
def grafana_api() -> Iterator[GrafanaApi]:
    server = GrafanaApi()
    yield server
    server.close()


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws():
        yield boto3.client("secretsmanager", region_name=REGION)


class ManagedGrafana:
    """The Managed Grafana API client under botocore's Stubber: each signed-in request expects
    one token created for the workspace's service account and then deleted."""

    def __init__(self, grafana_api: GrafanaApi) -> None:
        self.client = boto3.client("grafana", region_name=REGION)
        self.stubber = Stubber(self.client)
        self.grafana_api = grafana_api
        self.issued = 0

    def expect_signed_in_request(self, workspace: str = "g-abc123", account: str = "7") -> None:
        self.issued += 1
        key = f"glsa_key_{self.issued}"
        self.grafana_api.valid_tokens.add(key)
        self.stubber.add_response(
            "create_workspace_service_account_token",
            {
                "serviceAccountToken": {"id": f"tok-{self.issued}", "name": "deploy", "key": key},
                "serviceAccountId": account,
                "workspaceId": workspace,
            },
            {
                "workspaceId": workspace,
                "serviceAccountId": account,
                "name": ANY,
                "secondsToLive": provision.TOKEN_SECONDS,
            },
        )
        self.stubber.add_response(
            "delete_workspace_service_account_token",
            {
                "serviceAccountId": account,
                "tokenId": f"tok-{self.issued}",
                "workspaceId": workspace,
            },
            {
                "workspaceId": workspace,
                "serviceAccountId": account,
                "tokenId": f"tok-{self.issued}",
            },
        )


def _event(kind: str, request: str, grafana_api: GrafanaApi, **props: Any) -> dict[str, Any]:
    return {
        "RequestType": request,
        "ResourceType": kind,
        "PhysicalResourceId": props.pop("physical_id", "x"),
        "ResourceProperties": {
            "WorkspaceId": "g-abc123",
            "ServiceAccountId": "7",
            "Url": grafana_api.url,
            **props,
        },
    }


def test_provisions_the_influx_data_source_with_the_token_from_its_secret(
    grafana_api: GrafanaApi, aws: Any
) -> None:
    secret = aws.create_secret(Name="read-token", SecretString=json.dumps({"token": "ro-1"}))
    managed = ManagedGrafana(grafana_api)
    spec = {"uid": "iiot-influxdb", "name": "InfluxDB (dev)", "type": "influxdb", "access": "proxy",
            "url": "https://influx.example:8086", "jsonData": {"version": "Flux"}}  # fmt: skip
    event = _event(
        provision.DATA_SOURCE,
        "Create",
        grafana_api,
        DataSource=json.dumps(spec),
        TokenSecretArn=secret["ARN"],
    )
    with managed.stubber:
        managed.expect_signed_in_request()
        assert provision.on_event(event, grafana=managed.client, secrets=aws) == {
            "PhysicalResourceId": "iiot-influxdb"
        }
        # An update (a reissued token) conflicts on POST and replaces the data source by uid.
        aws.put_secret_value(SecretId=secret["ARN"], SecretString=json.dumps({"token": "ro-2"}))
        managed.expect_signed_in_request()
        provision.on_event({**event, "RequestType": "Update"}, grafana=managed.client, secrets=aws)
        managed.stubber.assert_no_pending_responses()
    stored = grafana_api.data_sources["iiot-influxdb"]
    assert stored["secureJsonData"] == {"token": "ro-2"}
    assert stored["url"] == "https://influx.example:8086"
    assert grafana_api.requests == [
        ("POST", "/api/datasources"),
        ("POST", "/api/datasources"),
        ("PUT", "/api/datasources/uid/iiot-influxdb"),
    ]
    # The tokens were deleted after each request: the stand-in must not accept them again.
    assert managed.issued == 2


def test_provisions_every_generated_dashboard_and_overwrites_it_on_update(
    grafana_api: GrafanaApi, aws: Any
) -> None:
    managed = ManagedGrafana(grafana_api)
    files = sorted(DASHBOARDS.glob("*.json"))
    with managed.stubber:
        for path in files + files[:1]:
            managed.expect_signed_in_request()
            event = _event(
                provision.DASHBOARD,
                "Create",
                grafana_api,
                Dashboard=path.read_text(),
                Source=f"dashboards/{path.name}",
            )
            result = provision.on_event(event, grafana=managed.client, secrets=aws)
            uid = json.loads(path.read_text())["uid"]
            assert result["PhysicalResourceId"] == uid
            assert result["Data"]["Url"].startswith(f"/d/{uid}/")
        managed.stubber.assert_no_pending_responses()
    assert set(grafana_api.dashboards) == {json.loads(f.read_text())["uid"] for f in files}
    first = json.loads(files[0].read_text())["uid"]
    assert grafana_api.dashboards[first]["version"] == 2
    assert grafana_api.dashboards[first]["panels"] == json.loads(files[0].read_text())["panels"]


def test_delete_removes_the_dashboard_and_tolerates_one_already_gone(
    grafana_api: GrafanaApi, aws: Any
) -> None:
    managed = ManagedGrafana(grafana_api)
    dashboard = json.dumps({"uid": "iiot-pumps", "title": "Pumps", "panels": []})
    create = _event(provision.DASHBOARD, "Create", grafana_api, Dashboard=dashboard, Source="d")
    delete = {**create, "RequestType": "Delete", "PhysicalResourceId": "iiot-pumps"}
    with managed.stubber:
        for _ in range(3):
            managed.expect_signed_in_request()
        provision.on_event(create, grafana=managed.client, secrets=aws)
        provision.on_event(delete, grafana=managed.client, secrets=aws)
        provision.on_event(delete, grafana=managed.client, secrets=aws)  # 404: fine
    assert grafana_api.dashboards == {}
    assert grafana_api.requests[-2:] == [("DELETE", "/api/dashboards/uid/iiot-pumps")] * 2


def test_a_rejected_request_fails_the_deployment_and_still_deletes_the_token(
    grafana_api: GrafanaApi, aws: Any
) -> None:
    from urllib.error import HTTPError

    managed = ManagedGrafana(grafana_api)
    spec = {"uid": "u", "name": "", "type": "influxdb", "access": "proxy"}  # no name: 400
    event = _event(provision.DATA_SOURCE, "Create", grafana_api, DataSource=json.dumps(spec))
    with managed.stubber:
        managed.expect_signed_in_request()
        with pytest.raises(HTTPError, match="400"):
            provision.on_event(event, grafana=managed.client, secrets=aws)
        managed.stubber.assert_no_pending_responses()  # the delete of the token was called


def test_the_service_account_is_created_once_and_deleted_with_the_stack(
    grafana_api: GrafanaApi, aws: Any
) -> None:
    managed = ManagedGrafana(grafana_api)
    props = {"Name": "cdk-provisioning", "Role": "ADMIN"}
    with managed.stubber:
        managed.stubber.add_response(
            "create_workspace_service_account",
            {"id": "7", "name": "cdk-provisioning", "grafanaRole": "ADMIN", "workspaceId": "g-abc123"},
            {"workspaceId": "g-abc123", "name": "cdk-provisioning", "grafanaRole": "ADMIN"},
        )  # fmt: skip
        managed.stubber.add_response(
            "delete_workspace_service_account",
            {"serviceAccountId": "7", "workspaceId": "g-abc123"},
            {"workspaceId": "g-abc123", "serviceAccountId": "7"},
        )
        create = _event(provision.SERVICE_ACCOUNT, "Create", grafana_api, **props)
        created = provision.on_event(create, grafana=managed.client, secrets=aws)
        assert created == {"PhysicalResourceId": "7", "Data": {"Id": "7"}}
        update = {**create, "RequestType": "Update", "PhysicalResourceId": "7"}
        assert provision.on_event(update, grafana=managed.client, secrets=aws) == {
            "PhysicalResourceId": "7"
        }
        delete = {**update, "RequestType": "Delete"}
        provision.on_event(delete, grafana=managed.client, secrets=aws)
        managed.stubber.assert_no_pending_responses()


# --- the read-only InfluxDB token against a stand-in InfluxDB v2 API -----------------------


class InfluxApi:
    """Sign-in (basic auth -> session cookie), buckets, authorizations, sign-out."""

    def __init__(self) -> None:
        self.authorizations: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, body: Any = None, cookie: str = "") -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                if cookie:
                    self.send_header("Set-Cookie", f"{cookie}; Path=/api/v2; HttpOnly")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length)) if length else None
                api.requests.append((self.command, self.path.split("?")[0]))
                if self.path == "/api/v2/signin":
                    expected = base64.b64encode(b"iiot-admin:secret").decode()
                    if self.headers.get("Authorization") != f"Basic {expected}":
                        return self._answer(401, {"message": "unauthorized"})
                    return self._answer(204, cookie="influxdb-oss-session=abc")
                if self.headers.get("Cookie") != "influxdb-oss-session=abc":
                    return self._answer(401, {"message": "no session"})
                if self.path == "/api/v2/signout":
                    return self._answer(204)
                if self.command == "GET" and self.path.startswith("/api/v2/buckets?"):
                    bucket = {"id": "b0b", "orgID": "0rg", "name": "telemetry"}
                    found = [bucket] if "name=telemetry" in self.path else []
                    return self._answer(200, {"buckets": found})
                if self.command == "POST" and self.path == "/api/v2/authorizations":
                    auth_id = f"a{len(api.authorizations) + 1}"
                    created = {**body, "id": auth_id, "token": f"token-{auth_id}"}
                    api.authorizations[auth_id] = created
                    return self._answer(201, created)
                if self.command == "DELETE" and self.path.startswith("/api/v2/authorizations/"):
                    if api.authorizations.pop(self.path.rsplit("/", 1)[-1], None) is None:
                        return self._answer(404, {"message": "authorization not found"})
                    return self._answer(204)
                return self._answer(404, {"message": "not found"})

            do_GET = do_POST = do_DELETE = _handle  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self._http = LocalHttpServer(Handler)
        self.url = self._http.url

    def close(self) -> None:
        self._http.close()


@pytest.fixture
def influx_api() -> Iterator[InfluxApi]:
    server = InfluxApi()
    yield server
    server.close()


def _token_event(request: str, influx_api: InfluxApi, secrets: Any, **extra: Any) -> dict[str, Any]:
    admin = secrets.create_secret(
        Name=f"admin-{request}-{len(influx_api.requests)}",
        SecretString=json.dumps({"username": "iiot-admin", "password": "secret"}),
    )
    token = secrets.create_secret(
        Name=f"token-{request}-{len(influx_api.requests)}", SecretString="{}"
    )
    return {
        "RequestType": request,
        "ResourceProperties": {
            "Url": influx_api.url,
            "AdminSecretArn": admin["ARN"],
            "TokenSecretArn": token["ARN"],
            "Org": "iiot",
            "Bucket": "telemetry",
            "Description": "iiot-dev Managed Grafana: read telemetry",
        },
        **extra,
    }


def test_issues_a_token_that_may_only_read_the_telemetry_bucket(
    influx_api: InfluxApi, aws: Any
) -> None:
    event = _token_event("Create", influx_api, aws)
    result = influx_token.on_event(event, secrets=aws)
    assert result == {"PhysicalResourceId": "authorization-a1"}
    (authorization,) = influx_api.authorizations.values()
    assert authorization["orgID"] == "0rg"
    assert authorization["permissions"] == [
        {"action": "read", "resource": {"type": "buckets", "id": "b0b", "orgID": "0rg"}}
    ]
    stored = json.loads(
        aws.get_secret_value(SecretId=event["ResourceProperties"]["TokenSecretArn"])["SecretString"]
    )
    assert stored == {"token": "token-a1", "authorizationId": "a1"}
    assert influx_api.requests[-1] == ("POST", "/api/v2/signout")


def test_delete_revokes_the_token_and_tolerates_a_revoked_one(
    influx_api: InfluxApi, aws: Any
) -> None:
    created = influx_token.on_event(_token_event("Create", influx_api, aws), secrets=aws)
    delete = _token_event(
        "Delete", influx_api, aws, PhysicalResourceId=created["PhysicalResourceId"]
    )
    assert influx_token.on_event(delete, secrets=aws) == created
    assert influx_api.authorizations == {}
    assert influx_token.on_event(delete, secrets=aws) == created  # 404: already revoked
    assert ("DELETE", "/api/v2/authorizations/a1") in influx_api.requests


def test_a_missing_bucket_fails_and_stores_no_token(influx_api: InfluxApi, aws: Any) -> None:
    event = _token_event("Create", influx_api, aws)
    event["ResourceProperties"]["Bucket"] = "nope"
    with pytest.raises(RuntimeError, match="0 buckets named 'nope'"):
        influx_token.on_event(event, secrets=aws)
    token_arn = event["ResourceProperties"]["TokenSecretArn"]
    assert aws.get_secret_value(SecretId=token_arn)["SecretString"] == "{}"
    assert influx_api.authorizations == {}


def test_handlers_import_nothing_but_the_standard_library_and_boto3() -> None:
    import ast

    for path in Path(provision.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {
            (node.module or "").split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
        } | {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        assert imported <= {
            "__future__", "base64", "json", "urllib", "uuid", "collections", "contextlib",
            "typing", "boto3", "",
        }, (path.name, imported)  # fmt: skip
