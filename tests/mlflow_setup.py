"""Seeds a real MLflow server for the gate tests.

Usage: python mlflow_setup.py TRACKING_URI JSON
JSON: {"model": name, "alias": str|null, "tags": {k: v}, "metrics": {k: v}}
Creates the registered model, a run with the metrics, a version from that
run (version "1"), the alias and the tags.
"""
import json
import sys

from mlflow.tracking import MlflowClient

uri, spec = sys.argv[1], json.loads(sys.argv[2])
client = MlflowClient(tracking_uri=uri, registry_uri=uri)
exp = client.get_experiment_by_name("gates") or client.get_experiment(client.create_experiment("gates"))
run = client.create_run(exp.experiment_id)
for k, v in spec.get("metrics", {}).items():
    client.log_metric(run.info.run_id, k, v)
client.set_terminated(run.info.run_id)
client.create_registered_model(spec["model"])
mv = client.create_model_version(spec["model"], source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
if spec.get("alias"):
    client.set_registered_model_alias(spec["model"], spec["alias"], mv.version)
for k, v in spec.get("tags", {}).items():
    client.set_model_version_tag(spec["model"], mv.version, k, v)
print(mv.version)
