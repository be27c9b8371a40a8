"""Lambda functions: lambdas/<function>/ holds handler.py (thin), models.py and service.py."""
