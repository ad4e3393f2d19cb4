"""The only package that imports boto3: one module per AWS service."""
