"""The relay's triggers. Logic lives in shared/; this module stays cheap to import for the host's indexing."""

import azure.functions as func

from shared.handlers import handle_expiry_timer, handle_mail_message, handle_retry_message, handle_status_cleanup

app = func.FunctionApp()


@app.queue_trigger(arg_name="msg", queue_name="%MAIL_QUEUE_NAME%", connection="AzureWebJobsStorage")
def send_mail(msg: func.QueueMessage) -> None:
    handle_mail_message(msg)


# The relay's own retry queue: only its identity may write it, so the retries it carries cannot be forged.
# The host resolves %MAIL_QUEUE_NAME% inside the name, as shared/settings.py's retry_queue_name spells it.
@app.queue_trigger(arg_name="msg", queue_name="%MAIL_QUEUE_NAME%-retry", connection="AzureWebJobsStorage")
def retry_mail(msg: func.QueueMessage) -> None:
    handle_retry_message(msg)


# Once a day by default (EXPIRY_CHECK_SCHEDULE, NCRONTAB with six fields: "0 0 7 * * *" is 07:00 UTC).
# The setting must exist: the host refuses to index a %NAME% it cannot resolve. Not on start-up (every
# cold start would check, and alert); use_monitor so a run missed while the app was down happens late.
@app.timer_trigger(arg_name="timer", schedule="%EXPIRY_CHECK_SCHEDULE%", run_on_startup=False, use_monitor=True)
def check_secret_expiry(timer: func.TimerRequest) -> None:
    handle_expiry_timer(timer)


# Status records older than STATUS_RETENTION_DAYS are deleted (STATUS_CLEANUP_SCHEDULE, hourly by default).
# A missed run only leaves records a little longer: no monitor needed.
@app.timer_trigger(arg_name="timer", schedule="%STATUS_CLEANUP_SCHEDULE%", run_on_startup=False, use_monitor=False)
def clean_status_records(timer: func.TimerRequest) -> None:
    handle_status_cleanup(timer)
