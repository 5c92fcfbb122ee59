"""The relay's triggers. Logic lives in shared/; this module stays cheap to import for the host's indexing."""

import os

import azure.functions as func

from shared.apps import app_queue, indexed_apps, trigger_name
from shared.handlers import (
    handle_expiry_timer,
    handle_mail_message,
    handle_queue_depths,
    handle_retry_message,
    handle_status_cleanup,
)

app = func.FunctionApp()
CONNECTION = "AzureWebJobsStorage"


@app.queue_trigger(arg_name="msg", queue_name="%MAIL_QUEUE_NAME%", connection="AzureWebJobsStorage")
def send_mail(msg: func.QueueMessage) -> None:
    handle_mail_message(msg)


# One trigger per declared app (MAILRELAY_APPS), on the app's own queue: the queue is the identity, so the app comes
# from which trigger ran, never from the message. The host indexes this module by importing it and reading
# app.get_functions() (azure-functions-python-worker, loader.index_function_app), after the app settings are in
# the environment; each function needs a unique name (azure-functions-python-library, decorators/function_app.py,
# _validate_function refuses a duplicate), hence function_name. A new app needs a restart to be indexed, which
# changing the app setting causes.
def _app_trigger(name: str) -> None:
    @app.function_name(name=trigger_name(name))
    @app.queue_trigger(arg_name="msg", queue_name=app_queue("%MAIL_QUEUE_NAME%", name), connection=CONNECTION)
    def send_app_mail(msg: func.QueueMessage) -> None:
        handle_mail_message(msg, app=name)


for _name in indexed_apps(os.environ):
    _app_trigger(_name)


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


# Each queue's depth as a metric (QUEUE_DEPTH_SCHEDULE, every 5 minutes by default): the alerts on poison depth and
# on mail waiting with nothing sent read it. A missed run is only a gap in the chart: no monitor.
@app.timer_trigger(arg_name="timer", schedule="%QUEUE_DEPTH_SCHEDULE%", run_on_startup=False, use_monitor=False)
def record_queue_depths(timer: func.TimerRequest) -> None:
    handle_queue_depths(timer)
