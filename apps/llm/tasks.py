from celery import shared_task

from apps.llm import ledger


@shared_task(name="llm.flush_ledger", ignore_result=False)
def flush_ledger() -> int:
    """Move queued UsageRecords from Redis into PostgreSQL.

    Web processes flush their own queue while they serve calls; this periodic
    task (Celery beat, every ``LLM_LEDGER_BEAT_SECONDS``) covers a process that
    went idle or died with rows queued. Claims make it safe to run beside them.
    """
    return ledger.flush()
