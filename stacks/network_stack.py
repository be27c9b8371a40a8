"""The VPC for the private data stores (Redshift Serverless, Timestream for InfluxDB) and the
functions that reach them. Isolated subnets only: no internet route, AWS APIs via endpoints."""

from __future__ import annotations

from typing import Any

from aws_cdk import Fn, RemovalPolicy, Stack, Token
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_logs as logs
from constructs import Construct

from config.environments import Environment
from stacks.constructs.python_function import log_retention

# Redshift Serverless needs subnets in three Availability Zones.
AZ_COUNT = 3


class NetworkStack(Stack):
    def __init__(
        self, scope: Construct, construct_id: str, *, env_config: Environment, **kwargs: Any
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(env_config.vpc_cidr),
            availability_zones=self.three_azs(),
            nat_gateways=0,
            subnet_configuration=[
                ec2.SubnetConfiguration(
                    name="data", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED, cidr_mask=22
                )
            ],
        )
        flow_logs = logs.LogGroup(
            self,
            "FlowLogs",
            retention=log_retention(env_config.log_retention_days),
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.vpc.add_flow_log(
            "FlowLog",
            destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_logs),
            traffic_type=ec2.FlowLogTrafficType.REJECT,
        )
        self.vpc.add_gateway_endpoint("S3", service=ec2.GatewayVpcEndpointAwsService.S3)
        self.vpc.add_gateway_endpoint("DynamoDb", service=ec2.GatewayVpcEndpointAwsService.DYNAMODB)
        self.endpoint_security_group = ec2.SecurityGroup(
            self,
            "EndpointSecurityGroup",
            vpc=self.vpc,
            description="HTTPS from the VPC to the AWS API interface endpoints",
            allow_all_outbound=False,
        )
        self.endpoint_security_group.add_ingress_rule(
            ec2.Peer.ipv4(env_config.vpc_cidr), ec2.Port.tcp(443), "HTTPS from the VPC"
        )
        for name, service in (
            ("SecretsManager", ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER),
            ("Sts", ec2.InterfaceVpcEndpointAwsService.STS),
            ("Sqs", ec2.InterfaceVpcEndpointAwsService.SQS),
            ("Kinesis", ec2.InterfaceVpcEndpointAwsService.KINESIS_STREAMS),
        ):
            self.vpc.add_interface_endpoint(
                name,
                service=service,
                private_dns_enabled=True,
                open=False,  # the endpoint security group above already admits the VPC
                security_groups=[self.endpoint_security_group],
                # One AZ where cost matters more than an AZ outage (dev): an endpoint's network
                # interface serves the whole VPC.
                subnets=ec2.SubnetSelection(subnets=[self.vpc.isolated_subnets[0]])
                if env_config.single_az_endpoints
                else None,
            )
        self.data_subnets = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)

    def three_azs(self) -> list[str]:
        """Three AZs: looked up by the CLI when the region is known, else tokens for any region."""
        if Token.is_unresolved(self.region):
            return [Fn.select(index, Fn.get_azs()) for index in range(AZ_COUNT)]
        return list(self.availability_zones)[:AZ_COUNT]
