"""The jobs of ./scripts/demo: a small shop's background work.

Workers load it with ``dbqueue work --app demo_app:app`` (scripts/demo puts
this directory on PYTHONPATH); the queue is wherever DBQUEUE_URL points.
Every job has an explicit name, so the names do not depend on how this
module was imported. The work is simulated: a few milliseconds of sleep.

    send_invoice   queue high     an email; a few addresses bounce for good
    resize_image   queue default  CPU work; a couple of files are corrupt
    sync_to_crm    queue default  a flaky third-party API: retried with backoff
    send_reminder  queue default  dispatched with a delay of a few seconds
    build_report   queue default  one of them runs past its timeout
"""

from __future__ import annotations

import random
import time

import dbqueue

app = dbqueue.App()  # DBQUEUE_URL


def simulate_work(low_ms: float = 2, high_ms: float = 6) -> None:
    time.sleep(random.uniform(low_ms, high_ms) / 1000)


class InvalidEmail(ValueError):
    """The address can never receive mail: retrying would not help."""


class CrmUnavailable(RuntimeError):
    """The CRM answered 503: worth another try later."""


@app.job(name="send_invoice", queue="high", tries=3, backoff=[1, 2],
         dont_retry=[InvalidEmail])
def send_invoice(invoice_id: int, email: str) -> None:
    simulate_work()
    if email.endswith("@invalid.example"):
        raise InvalidEmail(f"invoice {invoice_id}: mailbox {email} does not exist")


@app.job(name="resize_image", tries=2)
def resize_image(image_id: int, width: int) -> None:
    simulate_work(3, 8)
    if image_id % 173 == 0:
        # Fail: give up at once, whatever tries remain.
        raise dbqueue.Fail(f"image {image_id} is corrupt (not a JPEG)")


# Customers whose CRM record is locked: every attempt fails, so after four
# tries the job ends in failed_jobs. The others fail 20% of the time and
# usually succeed on a retry 0.1 to 1 s later (exponential backoff, jittered).
ALWAYS_DOWN = {4567, 4711}


@app.job(name="sync_to_crm", tries=4, backoff=dbqueue.Exponential(base=0.2, factor=2, cap=1))
def sync_to_crm(customer_id: int) -> None:
    simulate_work(2, 5)
    if customer_id in ALWAYS_DOWN:
        raise CrmUnavailable(f"customer {customer_id}: CRM answered 503 (record locked)")
    if random.random() < 0.2:
        raise CrmUnavailable(f"customer {customer_id}: CRM answered 503 Service Unavailable")


@app.job(name="send_reminder")
def send_reminder(invoice_id: int) -> None:
    simulate_work()


@app.job(name="build_report", timeout=0.5)
def build_report(month: str, seconds: float) -> None:
    time.sleep(seconds)  # the worker kills the job past its timeout


def dispatch() -> None:
    """Queue about 1,000 jobs in a few multi-row INSERTs and say what was queued."""
    rng = random.Random(7)  # the same mix on every run
    prepared = []
    for n in range(300):
        invoice = 10_000 + n
        domain = "invalid.example" if n in (13, 131, 257) else "shop.example"
        email = f"customer{n}@{domain}"
        # Overdue invoices go first within the high queue: lower priority runs first.
        job = send_invoice.options(priority=-1) if n % 10 == 0 else send_invoice
        prepared.append(job.prepare(invoice, email))
    for n in range(350):
        prepared.append(resize_image.prepare(1 + n, rng.choice([320, 640, 1280])))
    for n in range(300):
        prepared.append(sync_to_crm.prepare(4_500 + n))
    for n in range(48):
        prepared.append(send_reminder.options(delay=rng.uniform(1, 4)).prepare(10_000 + n))
    prepared.append(build_report.prepare("2024-05", 0.01))
    rng.shuffle(prepared)  # arrive interleaved, as they would from a web app
    # One report takes far longer than its 0.5 s timeout.
    prepared.append(build_report.prepare("2024-06", 5.0))
    count = app.dispatch_many(prepared)
    kinds: dict[str, int] = {}
    for item in prepared:
        kinds[item.new_job.job] = kinds.get(item.new_job.job, 0) + 1
    print(f"Dispatched {count} jobs: "
          + ", ".join(f"{n} {name}" for name, n in sorted(kinds.items(), key=lambda kv: -kv[1])))
