"""The warehouse: Redshift Serverless in the private subnets, reading the lake's Delta tables
through Spectrum (an external schema over the Glue database), and the reliability KPI views
over gold (schema `kpi`): availability, downtime hours, MTBF and MTTR per machine-day and per
factory-day, from the lake's `machine_day_kpis` (spark_jobs/maintenance.py)."""

from __future__ import annotations

from typing import Any

from aws_cdk import RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_redshiftserverless as redshift
from aws_cdk import custom_resources as cr
from constructs import Construct

from config.environments import Environment
from stacks.constructs.access import AWS_CUSTOM_RESOURCE_SINGLETON, acknowledge, grant_bucket
from stacks.constructs.redshift_statement import RedshiftStatement

DATABASE = "iiot"
EXTERNAL_SCHEMA = "lake"
KPI_SCHEMA = "kpi"
MACHINE_DAY_KPIS = "gold_machine_day_kpis"  # stacks/lake_stack.py TABLES


def kpi_views(external_schema: str = EXTERNAL_SCHEMA) -> list[str]:
    """The KPI views, in one transaction. Late-binding (WITH NO SCHEMA BINDING): a view over an
    external table must be. The factory-day view sums its machines' hours first and takes the
    ratios of the sums (spark_jobs/kpis.py's arithmetic; not a mean of the machines' ratios).
    Every database user may read them and the lake (the warehouse's users are its admin and
    the dashboards' reader; nothing in it is more private than the lake itself)."""
    source = f"{external_schema}.{MACHINE_DAY_KPIS}"  # module constants: no input in the SQL
    machine_day = (
        f"CREATE OR REPLACE VIEW {KPI_SCHEMA}.machine_day AS SELECT factory_id, machine_id, "  # noqa: S608
        "event_date, observed_h, downtime_h, unplanned_h, planned_h, failures, repairs, repair_h, "
        f"availability, mtbf_h, mttr_h FROM {source} WITH NO SCHEMA BINDING"
    )
    factory_day = (
        f"CREATE OR REPLACE VIEW {KPI_SCHEMA}.factory_day AS SELECT factory_id, event_date, "  # noqa: S608
        "COUNT(*) AS machines, SUM(observed_h) AS observed_h, SUM(downtime_h) AS downtime_h, "
        "SUM(unplanned_h) AS unplanned_h, SUM(planned_h) AS planned_h, "
        "SUM(failures) AS failures, SUM(repairs) AS repairs, SUM(repair_h) AS repair_h, "
        "1 - SUM(downtime_h) / NULLIF(SUM(observed_h), 0) AS availability, "
        "(SUM(observed_h) - SUM(downtime_h)) / NULLIF(SUM(failures), 0) AS mtbf_h, "
        "SUM(repair_h) / NULLIF(SUM(repairs), 0) AS mttr_h "
        f"FROM {source} GROUP BY factory_id, event_date WITH NO SCHEMA BINDING"
    )
    return [
        f"CREATE SCHEMA IF NOT EXISTS {KPI_SCHEMA}",
        machine_day,
        factory_day,
        f"GRANT USAGE ON SCHEMA {external_schema} TO PUBLIC",
        f"GRANT USAGE ON SCHEMA {KPI_SCHEMA} TO PUBLIC",
        f"GRANT SELECT ON ALL TABLES IN SCHEMA {KPI_SCHEMA} TO PUBLIC",
    ]


class WarehouseStack(Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        env_config: Environment,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        lake_key: kms.IKey,
        lake_paths: tuple[str, ...],
        glue_database: str,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        prefix = env_config.prefix
        self.spectrum_role = iam.Role(
            self,
            "SpectrumRole",
            assumed_by=iam.ServicePrincipal("redshift.amazonaws.com"),
            description="Redshift Spectrum: read the lake's Delta tables and their Glue catalog",
        )
        for path in lake_paths:
            grant_bucket(
                self.spectrum_role,
                self.spectrum_role,
                prefix=prefix,
                layer="lake",
                path=path,
                write=False,
                key=lake_key,
                why="Spectrum reads the Delta tables' manifests and Parquet files",
            )
        catalog = f"arn:{self.partition}:glue:{self.region}:{self.account}"
        self.spectrum_role.add_to_policy(
            iam.PolicyStatement(
                actions=[
                    "glue:GetDatabase",
                    "glue:GetDatabases",
                    "glue:GetTable",
                    "glue:GetTables",
                    "glue:GetPartition",
                    "glue:GetPartitions",
                    "glue:BatchGetPartition",
                ],
                resources=[
                    f"{catalog}:catalog",
                    f"{catalog}:database/{glue_database}",
                    f"{catalog}:table/{glue_database}/*",
                ],
            )
        )
        acknowledge(
            self.spectrum_role,
            "Spectrum resolves every Delta table of this lake database (the tables are added "
            "as the lake grows); read-only Glue actions, limited to this one database.",
            f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:glue:<AWS::Region>:"
            f"<AWS::AccountId>:table/{glue_database}/*]",
        )
        self.key = kms.Key(
            self,
            "WarehouseKey",
            alias=f"alias/{prefix}-warehouse",
            description="Encrypts the Redshift Serverless namespace and its admin secret",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.RETAIN
            if env_config.keep_data_on_delete
            else RemovalPolicy.DESTROY,
        )
        self.namespace = redshift.CfnNamespace(
            self,
            "Namespace",
            namespace_name=f"{prefix}-warehouse",
            db_name=DATABASE,
            admin_username="iiot_admin",
            # Redshift generates the admin password and keeps it in Secrets Manager.
            manage_admin_password=True,
            admin_password_secret_kms_key_id=self.key.key_arn,
            kms_key_id=self.key.key_arn,
            iam_roles=[self.spectrum_role.role_arn],
            default_iam_role_arn=self.spectrum_role.role_arn,
            log_exports=["userlog", "connectionlog", "useractivitylog"],
        )
        self.namespace.apply_removal_policy(
            RemovalPolicy.RETAIN if env_config.keep_data_on_delete else RemovalPolicy.DESTROY
        )
        self.security_group = ec2.SecurityGroup(
            self,
            "WorkgroupSecurityGroup",
            vpc=vpc,
            description="Redshift Serverless workgroup: SQL clients in the VPC only",
            allow_all_outbound=False,
        )
        self.security_group.add_ingress_rule(
            ec2.Peer.ipv4(env_config.vpc_cidr), ec2.Port.tcp(5439), "SQL from the VPC"
        )
        self.security_group.add_egress_rule(
            ec2.Peer.ipv4(env_config.vpc_cidr), ec2.Port.tcp(443), "AWS APIs via VPC endpoints"
        )
        self.workgroup = redshift.CfnWorkgroup(
            self,
            "Workgroup",
            workgroup_name=f"{prefix}-warehouse",
            namespace_name=self.namespace.namespace_name,
            base_capacity=env_config.redshift_base_rpu,
            max_capacity=env_config.redshift_max_rpu,  # the ceiling a query may scale to
            publicly_accessible=False,
            enhanced_vpc_routing=False,
            subnet_ids=vpc.select_subnets(subnet_type=subnets.subnet_type).subnet_ids,
            security_group_ids=[self.security_group.security_group_id],
        )
        self.workgroup.add_resource_dependency(self.namespace)
        self._external_schema(glue_database, env_config)

    def _external_schema(self, glue_database: str, env_config: Environment) -> None:
        """CREATE EXTERNAL SCHEMA through the Redshift Data API, as the admin (its secret);
        the deployment waits for the statement and fails with its error."""
        sql = (
            f"CREATE EXTERNAL SCHEMA IF NOT EXISTS {EXTERNAL_SCHEMA} FROM DATA CATALOG "
            f"DATABASE '{glue_database}' IAM_ROLE '{self.spectrum_role.role_arn}'"
        )
        # Redshift names its managed admin secret itself: read its ARN from the namespace.
        namespace = cr.AwsCustomResource(
            self,
            "AdminSecretArn",
            on_create=cr.AwsSdkCall(
                service="RedshiftServerless",
                action="getNamespace",
                parameters={"namespaceName": self.namespace.namespace_name},
                physical_resource_id=cr.PhysicalResourceId.of("admin-secret-arn"),
                output_paths=["namespace.adminPasswordSecretArn"],
            ),
            install_latest_aws_sdk=False,
            policy=cr.AwsCustomResourcePolicy.from_statements(
                [
                    iam.PolicyStatement(
                        actions=["redshift-serverless:GetNamespace"],
                        resources=[self.namespace.attr_namespace_namespace_arn],
                    )
                ]
            ),
        )
        namespace.node.add_dependency(self.namespace)
        secret_arn = namespace.get_response_field("namespace.adminPasswordSecretArn")
        schema = RedshiftStatement(
            self,
            "ExternalSchema",
            workgroup=self.workgroup,
            database=DATABASE,
            secret_arn=secret_arn,
            secret_key=self.key,
            sql=sql,
            log_retention_days=env_config.log_retention_days,
        )
        schema.node.add_dependency(self.workgroup, self.spectrum_role)
        # After the external schema, by the same handlers (one waiter for the stack).
        self.kpi_views = schema.then("KpiViews", kpi_views())
        # The one Lambda behind every AwsCustomResource of this stack (a CDK singleton).
        provider = self.node.find_child(AWS_CUSTOM_RESOURCE_SINGLETON)
        acknowledge(
            provider,
            "CDK's AwsCustomResource provider function (reads the admin secret's ARN once) "
            "uses the AWS managed basic execution role for its logs; it is not "
            "configurable and runs only on deployments.",
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
            "AWSLambdaBasicExecutionRole]",
        )
