"""Cloud dashboards: an Amazon Managed Grafana workspace that reads Timestream for InfluxDB
inside the VPC and the warehouse through the Redshift Data API, provisioned at deploy time
with the dashboards generated from the metric catalog (`dashboards/*.json`, `iiot dashboards`).

* **Sign-in** from typed config: IAM Identity Center by default; SAML when the environment
  names its identity provider's metadata (`<env>:grafana_saml_metadata_url`).
* **Network**: the workspace has network interfaces in the data subnets with a security group
  that may only reach the InfluxDB API port of the instance's group.
* **Workspace role** (customer managed, least privilege): temporary database credentials and
  the Data API on this environment's warehouse workgroup only; nothing else.
* **Provisioning** (custom resources, stacks/constructs/grafana_handlers/): a VPC function
  issues a read-only InfluxDB token for the telemetry bucket into this stack's secret; a
  second function signs in to the workspace's Grafana HTTP API with short-lived
  service-account tokens and puts the InfluxDB and Redshift data sources and every dashboard.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aws_cdk import CustomResource, Duration, RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_grafana as grafana
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_redshiftserverless as redshift
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import custom_resources as cr
from constructs import Construct

from config.environments import Environment
from stacks.artifacts import ROOT
from stacks.constructs.access import acknowledge, allow_vpc_network_interfaces
from stacks.constructs.python_function import ARCHITECTURE, RUNTIME, log_retention
from stacks.timeseries_stack import BUCKET, INFLUX_PORT, ORGANIZATION
from stacks.warehouse_stack import DATABASE

HANDLERS = Path(__file__).parent / "constructs" / "grafana_handlers"
DASHBOARDS = ROOT / "dashboards"
GRAFANA_VERSION = "10.4"
INFLUX_DATA_SOURCE_UID = "iiot-influxdb"
REDSHIFT_DATA_SOURCE_UID = "iiot-redshift"
# SAML assertion: the attribute that carries the user's Grafana role, and its values.
SAML_ROLE_ATTRIBUTE = "role"
SAML_ADMIN_ROLES = ["grafana-admin"]
SAML_EDITOR_ROLES = ["grafana-editor"]


@dataclass(frozen=True)
class DashboardSources:
    """What the dashboards read, from the time-series and warehouse stacks."""

    influx_url: str  # https://<endpoint>:8086
    influx_security_group: ec2.ISecurityGroup
    influx_admin_secret: secretsmanager.ISecret
    influx_admin_secret_key: kms.IKey
    warehouse: redshift.CfnWorkgroup


class GrafanaStack(Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        env_config: Environment,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        sources: DashboardSources,
        dashboards: Path = DASHBOARDS,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.env_config = env_config
        prefix = env_config.prefix
        self.security_group = ec2.SecurityGroup(
            self,
            "WorkspaceSecurityGroup",
            vpc=vpc,
            description="Managed Grafana: the InfluxDB API of the time-series instance only",
            allow_all_outbound=False,
        )
        self._allow_influx(self.security_group, sources, "Managed Grafana workspace")
        self.role = self._workspace_role(sources)
        saml = env_config.grafana_saml_metadata_url
        self.workspace = grafana.CfnWorkspace(
            self,
            "Workspace",
            name=f"{prefix}-dashboards",
            description=f"IIoT platform ({env_config.name}): fleet and pump dashboards",
            account_access_type="CURRENT_ACCOUNT",
            authentication_providers=["SAML" if saml else "AWS_SSO"],
            saml_configuration=self._saml(saml) if saml else None,
            permission_type="CUSTOMER_MANAGED",
            role_arn=self.role.role_arn,
            grafana_version=GRAFANA_VERSION,
            # InfluxDB is a core data source and Redshift one of the workspace's AWS data
            # sources: no plugin to install, so nobody may install one.
            plugin_admin_enabled=False,
            vpc_configuration=grafana.CfnWorkspace.VpcConfigurationProperty(
                security_group_ids=[self.security_group.security_group_id],
                subnet_ids=vpc.select_subnets(subnet_type=subnets.subnet_type).subnet_ids,
            ),
        )
        self.workspace.apply_removal_policy(RemovalPolicy.DESTROY)  # dashboards are code
        self.url = f"https://{self.workspace.attr_endpoint}"
        self.read_token = secretsmanager.Secret(
            self,
            "InfluxReadToken",
            description="Grafana's InfluxDB token: read-only, the telemetry bucket only",
            encryption_key=self._key(prefix),
            removal_policy=RemovalPolicy.DESTROY,
        )
        acknowledge(
            self.read_token,
            "The token is reissued by the custom resource on every change of the stack and "
            "the previous one revoked; Secrets Manager rotation cannot reach the private "
            "instance's API.",
            "AwsSolutions-SMG4",
        )
        token = self._read_token(env_config, vpc, subnets, sources)
        self.service_token = self._provisioner(env_config)
        account = CustomResource(
            self,
            "ServiceAccount",
            service_token=self.service_token,
            resource_type="Custom::GrafanaServiceAccount",
            properties={
                "WorkspaceId": self.workspace.attr_id,
                "Name": "cdk-provisioning",
                "Role": "ADMIN",
            },
        )
        signed_in = {
            "WorkspaceId": self.workspace.attr_id,
            "ServiceAccountId": account.get_att_string("Id"),
            "Url": self.url,
        }
        influx = CustomResource(
            self,
            "InfluxDataSource",
            service_token=self.service_token,
            resource_type="Custom::GrafanaDataSource",
            properties={
                **signed_in,
                "DataSource": self.to_json_string(self.influx_data_source(sources)),
                "TokenSecretArn": self.read_token.secret_arn,
                # A reissued token changes the physical id: Grafana then gets the new one.
                "TokenVersion": token.ref,
            },
        )
        warehouse = CustomResource(
            self,
            "RedshiftDataSource",
            service_token=self.service_token,
            resource_type="Custom::GrafanaDataSource",
            properties={
                **signed_in,
                "DataSource": self.to_json_string(self.redshift_data_source(sources)),
            },
        )
        self.dashboards: dict[str, CustomResource] = {}
        for path in sorted(dashboards.glob("*.json")):
            resource = CustomResource(
                self,
                f"Dashboard-{path.stem}",
                service_token=self.service_token,
                resource_type="Custom::GrafanaDashboard",
                properties={
                    **signed_in,
                    # Compact: a change of the generated file is an update of this resource.
                    "Dashboard": json.dumps(json.loads(path.read_text()), sort_keys=True),
                    "Source": f"dashboards/{path.name}",
                },
            )
            resource.node.add_dependency(influx, warehouse)
            self.dashboards[path.stem] = resource

    def influx_data_source(self, sources: DashboardSources) -> dict[str, Any]:
        """Grafana's InfluxDB (Flux) data source; the token is added at deploy time."""
        return {
            "uid": INFLUX_DATA_SOURCE_UID,
            "name": f"InfluxDB ({self.env_config.name})",
            "type": "influxdb",
            "access": "proxy",
            "url": sources.influx_url,
            "isDefault": True,
            "jsonData": {
                "version": "Flux",
                "organization": ORGANIZATION,
                "defaultBucket": BUCKET,
                "httpMode": "POST",
            },
        }

    def redshift_data_source(self, sources: DashboardSources) -> dict[str, Any]:
        """Grafana's Redshift data source: the workspace role's temporary credentials."""
        return {
            "uid": REDSHIFT_DATA_SOURCE_UID,
            "name": f"Redshift ({self.env_config.name})",
            "type": "grafana-redshift-datasource",
            "access": "proxy",
            "jsonData": {
                "authType": "ec2_iam_role",  # the workspace's IAM role
                "defaultRegion": self.region,
                "useServerless": True,
                "workgroupName": sources.warehouse.workgroup_name,
                "database": DATABASE,
            },
        }

    def _allow_influx(self, group: ec2.SecurityGroup, sources: DashboardSources, who: str) -> None:
        group.add_egress_rule(
            sources.influx_security_group, ec2.Port.tcp(INFLUX_PORT), "InfluxDB API"
        )
        # The rule lives in this stack (remote_rule): the time-series stack knows no reader.
        sources.influx_security_group.add_ingress_rule(
            group, ec2.Port.tcp(INFLUX_PORT), f"InfluxDB API from the {who}",
            remote_rule=True,
        )  # fmt: skip

    def _key(self, prefix: str) -> kms.Key:
        return kms.Key(
            self,
            "DashboardsKey",
            alias=f"alias/{prefix}-dashboards",
            description="Encrypts Grafana's read-only InfluxDB token",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.DESTROY,
        )

    def _saml(self, metadata_url: str) -> grafana.CfnWorkspace.SamlConfigurationProperty:
        return grafana.CfnWorkspace.SamlConfigurationProperty(
            idp_metadata=grafana.CfnWorkspace.IdpMetadataProperty(url=metadata_url),
            assertion_attributes=grafana.CfnWorkspace.AssertionAttributesProperty(
                role=SAML_ROLE_ATTRIBUTE, login="login", name="displayName", email="email"
            ),
            role_values=grafana.CfnWorkspace.RoleValuesProperty(
                admin=SAML_ADMIN_ROLES, editor=SAML_EDITOR_ROLES
            ),
        )

    def _workspace_role(self, sources: DashboardSources) -> iam.Role:
        """The role Grafana's AWS data sources act as: the warehouse, read through the Data API
        with temporary credentials of its own database user, and nothing else."""
        role = iam.Role(
            self,
            "WorkspaceRole",
            assumed_by=iam.ServicePrincipal(
                "grafana.amazonaws.com",
                conditions={"StringEquals": {"aws:SourceAccount": self.account}},
            ),
            description="Managed Grafana: query this environment's warehouse, nothing else",
        )
        workgroup = sources.warehouse.attr_workgroup_workgroup_arn
        role.add_to_policy(
            iam.PolicyStatement(
                actions=[
                    "redshift-serverless:GetCredentials",
                    "redshift-data:ExecuteStatement",
                    "redshift-data:ListDatabases",
                    "redshift-data:ListSchemas",
                    "redshift-data:ListTables",
                    "redshift-data:DescribeTable",
                ],
                resources=[workgroup],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                # No resource-level permissions; the Data API shows a statement's status and
                # result only to the identity that ran it.
                actions=[
                    "redshift-data:DescribeStatement",
                    "redshift-data:GetStatementResult",
                    "redshift-data:CancelStatement",
                ],
                resources=["*"],
            )
        )
        acknowledge(
            role,
            "The Data API's statement actions (describe, result, cancel) have no "
            "resource-level permissions and only ever see statements this same role ran.",
            "AwsSolutions-IAM5[Resource::*]",
        )
        return role

    def _handler_role(self, name: str, log_group: logs.LogGroup, description: str) -> iam.Role:
        role = iam.Role(
            self,
            name,
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=description,
        )
        log_group.grant_write(role)
        return role

    def _function(
        self, name: str, entry: str, role: iam.Role, log_group: logs.LogGroup, **vpc: Any
    ) -> lambda_.Function:
        return lambda_.Function(
            self,
            name,
            description=f"Managed Grafana provisioning: {entry} (custom resource)",
            runtime=RUNTIME,
            architecture=ARCHITECTURE,
            handler=f"{entry}.on_event",
            code=lambda_.Code.from_asset(str(HANDLERS), exclude=["__pycache__"]),
            timeout=Duration.minutes(2),
            role=role,
            log_group=log_group,
            **vpc,
        )

    def _provider(self, name: str, function: lambda_.Function, log_group: logs.LogGroup) -> str:
        provider = cr.Provider(self, name, on_event_handler=function, log_group=log_group)
        for child in provider.node.children:
            if child.node.id.startswith("framework-"):
                acknowledge(
                    child,
                    "CDK's provider framework function (not configurable): logs with the AWS "
                    "managed basic execution policy and invokes the handler by "
                    "version-qualified ARN.",
                    "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                    "AWSLambdaBasicExecutionRole]",
                    f"AwsSolutions-IAM5[Resource::<{self.resolve(function.node.default_child.logical_id)}.Arn>:*]",  # type: ignore[union-attr]
                )
        return provider.service_token

    def _read_token(
        self,
        env_config: Environment,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        sources: DashboardSources,
    ) -> CustomResource:
        """The read-only InfluxDB token, issued through the instance's API from the VPC."""
        log_group = logs.LogGroup(
            self,
            "TokenLogs",
            retention=log_retention(env_config.log_retention_days),
            removal_policy=RemovalPolicy.DESTROY,
        )
        role = self._handler_role(
            "TokenRole", log_group, "Token handler: issues Grafana's InfluxDB token"
        )
        # Granted on this side only: a grant through the secret would add this role to the
        # time-series key's policy, and that stack would depend on this one.
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"],
                resources=[sources.influx_admin_secret.secret_arn],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["kms:Decrypt"],
                resources=[sources.influx_admin_secret_key.key_arn],
                conditions={
                    "StringEquals": {
                        "kms:ViaService": f"secretsmanager.{self.region}.amazonaws.com"
                    }
                },
            )
        )
        self.read_token.grant_write(role)
        allow_vpc_network_interfaces(role)
        acknowledge(
            role,
            "A VPC function's network interface actions have no resource-level permissions; "
            "CDK's secret grants decrypt and encrypt with the two secrets' own keys only.",
            "AwsSolutions-IAM5[Resource::*]",
            "AwsSolutions-IAM5[Action::kms:GenerateDataKey*]",
            "AwsSolutions-IAM5[Action::kms:ReEncrypt*]",
        )
        group = ec2.SecurityGroup(
            self,
            "TokenSecurityGroup",
            vpc=vpc,
            description="Grafana token handler: InfluxDB and the AWS API endpoints",
            allow_all_outbound=False,
        )
        self._allow_influx(group, sources, "Grafana token handler")
        group.add_egress_rule(
            ec2.Peer.ipv4(env_config.vpc_cidr), ec2.Port.tcp(443), "AWS APIs via VPC endpoints"
        )
        function = self._function(
            "TokenHandler",
            "influx_token",
            role,
            log_group,
            vpc=vpc,
            vpc_subnets=subnets,
            security_groups=[group],
        )
        return CustomResource(
            self,
            "InfluxToken",
            service_token=self._provider("TokenProvider", function, log_group),
            resource_type="Custom::InfluxReadToken",
            properties={
                "Url": sources.influx_url,
                "AdminSecretArn": sources.influx_admin_secret.secret_arn,
                "TokenSecretArn": self.read_token.secret_arn,
                "Org": ORGANIZATION,
                "Bucket": BUCKET,
                "Description": f"{env_config.prefix} Managed Grafana: read telemetry",
            },
        )

    def _provisioner(self, env_config: Environment) -> str:
        """The handler that signs in to the workspace's Grafana API and puts what it needs."""
        log_group = logs.LogGroup(
            self,
            "ProvisionLogs",
            retention=log_retention(env_config.log_retention_days),
            removal_policy=RemovalPolicy.DESTROY,
        )
        role = self._handler_role(
            "ProvisionRole", log_group, "Provisioning handler: Grafana data and dashboards"
        )
        role.add_to_policy(
            iam.PolicyStatement(
                actions=[
                    "grafana:CreateWorkspaceServiceAccount",
                    "grafana:DeleteWorkspaceServiceAccount",
                    "grafana:CreateWorkspaceServiceAccountToken",
                    "grafana:DeleteWorkspaceServiceAccountToken",
                ],
                resources=[
                    f"arn:{self.partition}:grafana:{self.region}:{self.account}:/workspaces/"
                    f"{self.workspace.attr_id}"
                ],
            )
        )
        self.read_token.grant_read(role)
        function = self._function("ProvisionHandler", "provision", role, log_group)
        return self._provider("Provider", function, log_group)
