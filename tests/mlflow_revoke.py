"""Revokes an approval: deletes alias and tag. Usage: mlflow_revoke.py URI MODEL ALIAS TAG"""
import sys

from mlflow.tracking import MlflowClient

uri, model, alias, tag = sys.argv[1:5]
client = MlflowClient(tracking_uri=uri, registry_uri=uri)
client.delete_registered_model_alias(model, alias)
client.delete_model_version_tag(model, "1", tag)
