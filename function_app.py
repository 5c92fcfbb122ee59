"""The relay's triggers. Logic lives in shared/; this module stays cheap to import for the host's indexing."""

import azure.functions as func

from shared.handlers import handle_mail_message

app = func.FunctionApp()


@app.queue_trigger(arg_name="msg", queue_name="%MAIL_QUEUE_NAME%", connection="AzureWebJobsStorage")
def send_mail(msg: func.QueueMessage) -> None:
    handle_mail_message(msg)
