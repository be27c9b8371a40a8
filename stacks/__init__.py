"""CDK stacks, one per deployable concern; reusable Constructs live in stacks/constructs/."""
