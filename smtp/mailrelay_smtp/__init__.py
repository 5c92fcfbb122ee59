"""SMTP intake for Graph Mail Relay (docs/smtp.md): devices and legacy apps log in over SMTP, and each mail is stored
as a claim-checked MIME payload of its app and put on the app's queue before the listener answers 250.

It is an app of the relay, not part of it: it uses the client library (mailrelay_client), never the relay's code."""
