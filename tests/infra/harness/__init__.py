"""The runtime-permission harness: each runtime's real AWS calls, checked against the role
policies of the synthesized templates (tests/infra/test_runtime_permissions.py).

- `model.Cloud`: one environment's templates as one cloud, every value resolved;
- `policy`: a role's statements from the templates, and IAM's verdict;
- `recorder`: every botocore call made in this process;
- `access`: what IAM checks for a call, implied accesses (KMS, PassRole) included;
- `workflows`: the services that call AWS for the platform (Step Functions, SageMaker
  Pipelines, CodeBuild, Greengrass), replayed from their definitions.
"""
