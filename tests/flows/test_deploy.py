"""The scheduled deployment, registered on a real Prefect server."""

from prefect.client.orchestration import get_client

from flows.deploy import pipeline_deployment


def test_deployment_is_registered_with_its_cron_schedule(tmp_path, prefect_server):
    deployment_id = pipeline_deployment(tmp_path, cron="0 3 * * *").apply()
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment(deployment_id)
    assert deployment.name == "scheduled"
    assert deployment.parameters == {"root": str(tmp_path.resolve())}
    assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * *"]
