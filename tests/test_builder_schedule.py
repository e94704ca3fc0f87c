"""The builder's schedule: largest component first, and verification beside conversions only."""

import threading
from concurrent.futures import ThreadPoolExecutor

from sdbuild.builder import _Behind
from sdbuild.preflight import compose_recipe
from sdbuild.plan import execution_order, plan_jobs
from sdbuild.spec import validate


def test_components_run_largest_first_and_are_reported_in_plan_order():
    spec = validate(compose_recipe(["recipe=tiny-sdxl-refiner"]))
    jobs = plan_jobs(spec)
    order = [job.name for job in execution_order(jobs)]
    assert order[0] == "refiner" and sorted(order) == sorted(job.name for job in jobs)
    sd2 = [job.name for job in execution_order(plan_jobs(validate(compose_recipe([]))))]
    assert sd2 == ["unet", "text_encoder", "vae_decoder", "vae_encoder"]


def test_a_verification_starts_when_the_next_conversion_does_or_when_that_component_ends():
    started: list[str] = []
    gate = threading.Event()  # holds the first verification so the test sees what has started

    def verification(name):
        def run():
            started.append(name)
            if name == "unet":
                gate.wait(5)
            return name
        return run

    with ThreadPoolExecutor(max_workers=1) as executor:
        behind = _Behind(executor)
        behind.wait("unet", verification("unet"))
        assert started == []  # the next component's load and trace run alone
        behind.start_waiting()  # ...its conversion starts
        behind.start_waiting()  # a second call starts nothing more
        behind.wait("text_encoder", verification("text_encoder"))
        behind.wait("vae_decoder", verification("vae_decoder"))  # text_encoder's successor converted nothing
        gate.set()
        behind.start_waiting()
        assert [behind.result(name) for name in ("unet", "text_encoder", "vae_decoder")] == ["unet", "text_encoder", "vae_decoder"]
    assert started == ["unet", "text_encoder", "vae_decoder"]
