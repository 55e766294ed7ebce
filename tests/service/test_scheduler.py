"""The fair queue on its own (no server): turn order, nested limits, removal."""

from __future__ import annotations

from rlm.service.scheduler import FairScheduler, Job


def make(max_running: int = 1, max_boxes: int = 100) -> tuple[FairScheduler, list[str]]:
    started: list[str] = []
    scheduler = FairScheduler(max_running=max_running, max_boxes=max_boxes, start=lambda job: started.append(job.run_id))
    return scheduler, started


def test_a_flooding_tenant_does_not_delay_another_tenants_first_run():
    scheduler, started = make(max_running=1)
    scheduler.set_tenant_limit("a", 1)
    scheduler.set_tenant_limit("b", 1)
    for i in range(1000):
        scheduler.enqueue(Job(f"a{i}", "a"))
    scheduler.enqueue(Job("b0", "b"))
    assert started == ["a0"]
    scheduler.finished("a0")
    assert started == ["a0", "b0"]  # the next free slot goes to the tenant not served yet
    scheduler.finished("b0")
    assert started[-1] == "a1"
    assert scheduler.queued("a") == 998


def test_tenants_take_turns():
    scheduler, started = make(max_running=1)
    for t in "abc":
        scheduler.set_tenant_limit(t, 5)
        for i in range(3):
            scheduler.enqueue(Job(f"{t}{i}", t))
    while scheduler.running():
        scheduler.finished(started[-1])
    assert started == ["a0", "b0", "c0", "a1", "b1", "c1", "a2", "b2", "c2"]


def test_per_tenant_limit_inside_the_global_one():
    scheduler, started = make(max_running=4)
    scheduler.set_tenant_limit("a", 2)
    scheduler.set_tenant_limit("b", 4)
    for i in range(5):
        scheduler.enqueue(Job(f"a{i}", "a"))
    assert started == ["a0", "a1"]  # a's own cap, although the server has room
    for i in range(5):
        scheduler.enqueue(Job(f"b{i}", "b"))
    assert scheduler.running() == 4 and scheduler.running("a") == 2 and scheduler.running("b") == 2


def test_box_slots_count_against_the_global_box_limit():
    scheduler, started = make(max_running=10, max_boxes=5)
    scheduler.set_tenant_limit("a", 10)
    scheduler.enqueue(Job("big1", "a", box_slots=3))
    scheduler.enqueue(Job("big2", "a", box_slots=3))
    assert started == ["big1"] and scheduler.boxes_in_use == 3
    scheduler.finished("big1")
    assert started == ["big1", "big2"]


def test_a_queued_run_can_be_removed_and_a_limit_change_starts_runs():
    scheduler, started = make(max_running=10)
    scheduler.set_tenant_limit("a", 0)
    scheduler.enqueue(Job("a0", "a"))
    scheduler.enqueue(Job("a1", "a"))
    assert started == []
    assert scheduler.remove("a0") is True and scheduler.remove("a0") is False
    scheduler.set_tenant_limit("a", 1)
    assert started == ["a1"]
