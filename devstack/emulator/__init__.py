"""Local emulator of Microsoft Entra ID, Microsoft Graph (sendMail) and Azure Key Vault (secrets).

One HTTPS server on loopback plays all three services well enough that the real Microsoft SDKs
(MSAL, azure-identity's ManagedIdentityCredential, azure-keyvault-secrets) work against it
unchanged, errors included. The error bodies copy the shapes the real services answer with;
the module's docstrings and the project's report say where each shape was confirmed.

This is local-only tooling (the ``devstack`` folder is never deployed). It logs request paths and
status codes only: never a secret value, a client secret or a token.

Python use::

    emu = Emulator()            # host 127.0.0.1, a free port
    emu.start()
    emu.add_app(tenant, client_id, "s3cret")
    emu.add_mailbox("relay@contoso.com")
    ...
    emu.stop()

Process use: ``python -m devstack.emulator --port 0 [--seed seed.json] [--ready-file PATH]`` prints (and
writes) ``{"url", "caCertPath", "identityHeader", "msiEndpoint"}`` once ready, and serves until SIGTERM or
SIGINT. The seed file has the lists ``apps``, ``identities``, ``mailboxes``, ``secrets``, ``certificates`` (and
``faults``), entries shaped as the admin API's bodies below.

Admin API (no auth, JSON in and out), under ``{url}/_emulator/``:

- ``GET outbox``, ``GET stats``, ``GET faults``; ``POST reset``, ``POST expire-tokens``, ``POST faults-clear``
- ``GET sent-items?mailbox=``, ``GET drafts``, ``GET inbox?mailbox=`` (non-delivery reports), ``GET copies``,
  ``GET throttling``, ``GET transport``
- ``POST transport`` ``{"count", "mailbox"?, "ndr"?}`` (the next N messages fail in transport) or ``{"mailbox",
  "failing": bool, "ndr"?}`` (every message of the mailbox, until switched back): an NDR in the sender's Inbox,
  nothing in Sent Items, the outbox entry ``bounced`` (transport.py)
- ``POST exchange`` ``{"scopeDelaySeconds"?, "groupMailEnabled"?, "sentItemsDelaySeconds"?, "policyDenialText"?,
  "maxMessageSizeBytes"?, "uploadSessionSeconds"?}``; ``POST vault-access`` ``{"clientId",
  "canReadSecrets": bool}`` (Key Vault RBAC); ``POST scope`` also takes ``"delaySeconds"``; ``POST apps`` also
  ``"scopeModel"`` (rbac | policy | none), ``"policyAccess"``, ``"exchangeRoles"``; ``POST mailboxes`` also
  ``"exchangeOnline"``
- ``POST apps`` (or ``app``) ``{"tenantId", "clientId", "secret"?, "roles"?: [...], "secretExpired"?: bool,
  "secretEnd"?: iso, "keyCredentials"?: [{"certificate": PEM, "displayName"?}], "federatedCredentials"?: [{"name",
  "issuer", "subject", "audiences"}]}`` (no ``secret``: an app with no client secret)
- ``POST identity`` ``{"clientId", "principalId", "roles"?, "exchangeRoles"?, "scopeModel"?, "tenantId"?,
  "resourceId"?}`` (a user-assigned managed identity; add or replace) or ``{"clientId", "delete": true}``
- ``POST app-federated-credential`` ``{"clientId", "name", "issuer", "subject", "audiences"?}`` -> ``{"id"}`` (add
  or replace by name; at most 20) or ``{"clientId", "name", "delete": true}``
- ``POST app-key-credential`` ``{"clientId", "certificate": PEM, "displayName"?}`` -> ``{"keyId"}``
- ``POST certificate`` ``{"name", "pem": private key + certificate PEM}`` -> ``{"version"}`` (a Key Vault
  certificate: a managed application/x-pem-file secret version, exp/nbf the certificate's)
- ``POST app-secret`` ``{"clientId", "secret", "expired"?: bool, "secretEnd"?: iso}``
- ``POST app-credentials`` ``{"clientId", "endDateTime": iso, "displayName"?}`` -> ``{"keyId"}`` (listed only)
- ``POST mailboxes`` ``{"address", "inExchangeScope"?: bool, "restEnabled"?: bool}``
- ``POST scope`` ``{"address", "inScope": bool}``
- ``POST secrets`` ``{"name", "value", "expiresOn"?: iso | null, "enabled"?: bool}`` -> ``{"version"}``
- ``POST secret-properties`` ``{"name", "version"?, "expiresOn"?: iso | null, "enabled"?: bool}`` (update a
  version's attributes, the current one by default, as ``az keyvault secret set-attributes`` does)
- ``POST faults`` ``{"service", "status"?: int | null, "retryAfter"?, "count"?, "delay"?, "code"?,
  "message"?}``

Emulated endpoints: ``GET /{tenant}/v2.0/.well-known/openid-configuration``, ``GET
/{tenant}/discovery/v2.0/keys``, ``POST /{tenant}/oauth2/v2.0/token`` (client credentials: a secret, a
certificate's assertion or a federated one), ``GET /msi/token`` (App Service managed identity, api-version
2019-08-01: the system-assigned identity, or a user-assigned one by client_id, principal_id/object_id or mi_res_id),
``GET /secrets/{name}[/{version}]``, ``GET /secrets/{name}/versions`` and ``GET
/certificates/{name}[/{version}]`` (Key Vault; the vault URL is the emulator's URL), ``POST
/v1.0/users/{id or upn}/sendMail``, ``GET /v1.0/users/{id or upn}/mailFolders/inbox`` (a read, scoped by
Exchange as sending is) and ``GET /v1.0/applications(appId='{id}')[?$select=...]`` and its
``/federatedIdentityCredentials`` (Graph; these need the application role Application.Read.All, as the real ones do
app-only).

Layout: one module per service it plays, each a part of `Emulator` holding that service's rules and error shapes:
``entra`` (token endpoint, OIDC configuration, JWKS), ``credentials`` (certificate and federated assertions,
keyCredentials, federated identity credentials), ``identity`` (App Service managed identity and user-assigned
identities), ``keyvault`` (secrets, certificates, the challenge), ``graph`` (sendMail, mailboxes, applications),
``drafts`` (drafts and upload sessions), ``sent_items``, ``transport`` (Drafts to Sent Items, or an NDR),
``throttling`` (Graph's and Exchange's limits) and ``exchange`` (Exchange Online's scope on the app). ``state``
holds what they share (apps, mailboxes, secrets, outbox, stats, and the tokens they issue and check), ``faults`` the
fault injection, ``admin`` the admin API above and seeds, ``server`` the HTTPS server and the dispatch, ``common``
requests, responses and small helpers.
"""

from devstack.emulator.common import SERVICES, EmulatorError
from devstack.emulator.server import Emulator

__all__ = ["SERVICES", "Emulator", "EmulatorError"]
