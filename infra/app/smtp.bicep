// The SMTP listener (issue 22; docs/smtp.md): devices and legacy apps speak SMTP to it, and it puts each mail on its
// app's queue as a MIME request, through the client library, before it answers 250. Optional: main.bicep deploys this
// module only with deploySmtpListener. It holds a virtual network, a Container Apps environment in it and one Container
// App, built from smtp/Dockerfile.
//
// What Microsoft documents that shapes it (Azure Container Apps):
// - TCP ingress needs a custom VNet: "External TCP ingress is only supported for Container Apps environments that use a
//   custom VNET" (https://learn.microsoft.com/azure/container-apps/ingress-overview#tcp). Hence the VNet below; the
//   subnet is delegated to Microsoft.App/environments, and a workload-profiles environment (Consumption profile) takes
//   a subnet of /27 or larger (https://learn.microsoft.com/azure/container-apps/networking, "Environment selection").
// - exposedPort: "(TCP ingress only) The port TCP listens on. If external is true, the value must be unique in the
//   Container Apps environment", 1 to 65535, not 80 or 443 (https://learn.microsoft.com/azure/container-apps/ingress-how-to,
//   "Ingress settings"). 587 is the main port, targetPort 587 in the container.
// - additionalPortMappings: further TCP ports; external only if the app is external and the environment has a custom
//   VNet; an external exposed port is unique across the environment; at most 5 per app
//   (https://learn.microsoft.com/azure/container-apps/ingress-overview#additional-tcp-ports). 465 -> 465.
// - ipSecurityRestrictions: allow or deny rules on IPv4 ranges in CIDR notation, all of one kind; "If no IP restriction
//   rules are defined, all inbound traffic is allowed"; with rules, "only traffic that matches at least one rule is
//   allowed" (https://learn.microsoft.com/azure/container-apps/ip-restrictions). Here: Allow rules from
//   allowedSourceCidrs, which may not be empty (@minLength(1) below refuses the deployment, naming the parameter), so
//   the listener is never open to the whole internet by omission. A rule of 0.0.0.0/0 opens it by choice.
//   Check it after deployment from an address outside the list (docs/smtp.md): a TCP app's restriction was once
//   reported not enforced (microsoft/azure-container-apps#1010, 2023, closed).
// - Secrets from Key Vault: a secret with keyVaultUrl and identity (a user-assigned identity's resource id), which
//   needs Key Vault Secrets User; without a version in the URL the app follows the latest version; and
//   secrets mounted as files in a volume of storageType Secret
//   (https://learn.microsoft.com/azure/container-apps/manage-secrets, "Reference secret from Key Vault", "Mounting
//   secrets in a volume"). The listener reads its logins file and its certificate from that volume, never from an
//   environment variable.
//
// The client IP: Container Apps' TCP ingress proxies each connection, and the container sees an address of the
// environment, not the device's (microsoft/azure-container-apps#899, "Preserve Client IP address for TCP ingress",
// open when read). So the allow-list is enforced here, at the ingress, and the listener is told the peer is not the
// device (SMTP_PEER_IS_DEVICE=false): it slows failed logins per user only, so that one device's wrong password does
// not slow every device, and keeps no per-source connection cap. docs/smtp.md says so.
//
// Syntax note: the same limits as main.bicep's header (pycep-parser): one-line expressions, no user-defined types,
// no fail(), at most four comment lines in a row inside an object.

@description('Region of the environment and the app.')
param location string

@description('Tags of every resource here.')
param tags object = {}

@description('Name of the virtual network the environment lives in.')
param vnetName string

@description('Address space of that virtual network, in CIDR notation; the environment\'s subnet takes all of it. A workload-profiles environment needs /27 or larger. Must not overlap a network you peer it with.')
param vnetAddressPrefix string = '10.42.0.0/24'

@description('Name of the Container Apps environment.')
param environmentName string

@description('Resource id of the relay\'s Log Analytics workspace: the environment\'s logs (the listener\'s console) go there.')
param workspaceResourceId string

@minLength(2)
@maxLength(32)
@description('Name of the Container App (lower-case letters, digits and hyphens).')
param appName string

@minLength(1)
@description('The listener\'s image, built from smtp/Dockerfile with the repository root as context and pushed to a registry, e.g. myregistry.azurecr.io/mailrelay-smtp:0.1.0. Required: an empty value refuses the deployment.')
param image string

@description('Server of a private registry the image is pulled from with the identity (e.g. myregistry.azurecr.io); the identity needs AcrPull there. Empty: a public image.')
param registryServer string = ''

@description('Resource id of the relay\'s user-assigned identity (the Function\'s): Key Vault references, the registry, the queues.')
param identityId string

@description('Client id of that identity (AZURE_CLIENT_ID for the listener\'s storage client).')
param identityClientId string

@description('Principal (object) id of that identity, for its roles on the two Key Vault secrets.')
param identityPrincipalId string

@description('Name of the relay\'s Key Vault, which holds the logins file and the certificate.')
param keyVaultName string

@description('URI of the relay\'s Key Vault, https://<name>.vault.azure.net/.')
param keyVaultUri string

@minLength(1)
@maxLength(127)
@description('Key Vault secret holding the logins file (SMTP_LOGINS_FILE): JSON {"logins": [{"user", "app", "device", "hash"}]}.')
param loginsSecretName string = 'smtp-logins'

@minLength(1)
@maxLength(127)
@description('Key Vault certificate (or secret) holding the TLS certificate chain and its private key as one PEM (content type application/x-pem-file); a Key Vault certificate is read through its secret of the same name.')
param tlsCertificateName string = 'smtp-tls'

@minLength(1)
@description('IPv4 ranges in CIDR notation allowed to connect (the sites\' public addresses, e.g. 203.0.113.10/32). At least one: an empty list refuses the deployment. 0.0.0.0/0 would open the listener to the internet.')
param allowedSourceCidrs array

@description('The apps\' declaration the relay reads (MAILRELAY_APPS, JSON): the listener reads each app\'s name and senders. The same value as the Function\'s.')
param relayApps string

@description('The default app\'s senders (ALLOWED_SENDERS), as the Function has them.')
param allowedSenders string

@description('Base name of the queues (MAIL_QUEUE_NAME); an app\'s queue is <name>-<app>.')
param mailQueueName string

@description('Queue endpoint of the relay\'s storage account, https://<account>.queue.core.windows.net (SMTP_QUEUE_SERVICE_URI); the payload blobs go to the account\'s blob endpoint beside it.')
param queueServiceUri string

@description('Name in the greeting and EHLO (SMTP_HOSTNAME), the name the certificate is for. Empty: the app\'s own name in the environment\'s domain.')
param hostname string = ''

@minValue(1)
@maxValue(30)
@description('Replicas always running. At least 1: an SMTP server must answer when a device calls, so it never scales to zero.')
param minReplicas int = 1

@minValue(1)
@maxValue(30)
@description('Most replicas the TCP scale rule may run.')
param maxReplicas int = 3

@minValue(1)
@description('Open connections per replica above which the TCP scale rule adds a replica.')
param concurrentConnectionsPerReplica int = 50

// Built-in role definition (the same id in every tenant).
var keyVaultSecretsUserRoleId = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '4633458b-17de-408a-b874-0445c86b69e6') // Key Vault Secrets User

// The environment's subnet (all of vnetAddressPrefix).
var subnetName = 'snet-container-apps'
// Where the secret volume is mounted, and the file of each secret in it.
var secretsMountPath = '/mnt/smtp-secrets'
var loginsFileName = 'logins.json'
var tlsCertificateFileName = 'tls.pem'
// The Container Apps secrets (names: lower-case letters, digits and hyphens), each a reference to Key Vault without a
// version, so a renewed certificate or an edited logins file is picked up (manage-secrets, as above).
var loginsSecretRef = 'smtp-logins'
var tlsSecretRef = 'smtp-tls-cert'

// Allow rules only: Container Apps takes no mix of allow and deny (ip-restrictions, as above).
var ipSecurityRestrictions = [for (cidr, i) in allowedSourceCidrs: {
  name: 'smtp-site-${i}'
  description: 'SMTP devices at ${cidr}'
  ipAddressRange: cidr
  action: 'Allow'
}]

// --- network --------------------------------------------------------------------------------------

resource vnet 'Microsoft.Network/virtualNetworks@2024-05-01' = {
  name: vnetName
  location: location
  tags: tags
  properties: {
    addressSpace: {
      addressPrefixes: [
        vnetAddressPrefix
      ]
    }
    subnets: [
      {
        name: subnetName
        properties: {
          addressPrefix: vnetAddressPrefix
          // A workload-profiles environment's subnet is delegated to Microsoft.App/environments (networking, as above).
          delegations: [
            {
              name: 'Microsoft.App.environments'
              properties: {
                serviceName: 'Microsoft.App/environments'
              }
            }
          ]
        }
      }
    ]
  }
}

// --- Container Apps environment -------------------------------------------------------------------

// Parameters as avm/res/app/managed-environment 0.15.0 names them (Azure/bicep-registry-modules, tag
// avm/res/app/managed-environment/0.15.0, main.bicep). Its publicNetworkAccess defaults to Disabled and its
// zoneRedundant to true: set here, as devices reach the listener over the internet and one replica is the floor.
module smtpEnvironment 'br/public:avm/res/app/managed-environment:0.15.0' = {
  name: 'relay-smtp-environment'
  params: {
    name: environmentName
    location: location
    tags: tags
    infrastructureSubnetResourceId: '${vnet.id}/subnets/${subnetName}'
    internal: false
    publicNetworkAccess: 'Enabled'
    zoneRedundant: false
    workloadProfiles: [
      {
        name: 'Consumption'
        workloadProfileType: 'Consumption'
      }
    ]
    // The apps' console logs through Azure Monitor's diagnostic settings (to the relay's workspace, main.bicep), not
    // the log-analytics destination, which would hand the workspace's shared key to the environment.
    appLogsConfiguration: {
      destination: 'azure-monitor'
    }
    diagnosticSettings: [
      {
        workspaceResourceId: workspaceResourceId
      }
    ]
  }
}

// --- Key Vault: the identity reads the two secrets and nothing else of the vault's --------------------

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

// Both must exist before this module deploys (docs/smtp.md, the order of the set-up): a role assignment needs its
// scope, and the app fetches them when its revision starts.
resource loginsSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = {
  parent: keyVault
  name: loginsSecretName
}

resource tlsSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = {
  parent: keyVault
  name: tlsCertificateName
}

// Key Vault Secrets User on the logins secret only: Container Apps reads it with the identity. Key Vault's RBAC takes a
// single secret as a role's scope (https://learn.microsoft.com/azure/key-vault/general/rbac-guide). In the secret and
// certificate modes the identity also holds this role on the whole vault (app/rbac.bicep), for the Graph credential;
// in the federated and managed-identity modes it holds none there, and these two are all it reads.
resource loginsSecretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(loginsSecret.id, identityPrincipalId, keyVaultSecretsUserRoleId)
  scope: loginsSecret
  properties: {
    roleDefinitionId: keyVaultSecretsUserRoleId
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
    description: 'Graph Mail Relay SMTP listener: read the logins file.'
  }
}

// Key Vault Secrets User on the certificate's secret only: the chain and private key, as one PEM.
resource tlsSecretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(tlsSecret.id, identityPrincipalId, keyVaultSecretsUserRoleId)
  scope: tlsSecret
  properties: {
    roleDefinitionId: keyVaultSecretsUserRoleId
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
    description: 'Graph Mail Relay SMTP listener: read the TLS certificate and its key.'
  }
}

// --- the listener ----------------------------------------------------------------------------------

// Parameters as avm/res/app/container-app 0.23.0 names them (Azure/bicep-registry-modules, tag
// avm/res/app/container-app/0.23.0, main.bicep): ingressTransport, ingressTargetPort, exposedPort,
// additionalPortMappings ({external, targetPort, exposedPort}), ipSecurityRestrictions, secrets ({name, keyVaultUrl,
// identity}), volumes, scaleSettings and managedIdentities. With transport tcp the module sets allowInsecure false
// and leaves CORS, client certificates and traffic splitting out, which are HTTP's.
module listener 'br/public:avm/res/app/container-app:0.23.0' = {
  name: 'relay-smtp-listener'
  params: {
    name: appName
    location: location
    tags: tags
    environmentResourceId: smtpEnvironment.outputs.resourceId
    workloadProfileName: 'Consumption'
    // The Function's identity, and no system-assigned one (main.bicep, graphCredential: a system identity's principal
    // changes when the app is re-created).
    managedIdentities: {
      systemAssigned: false
      userAssignedResourceIds: [
        identityId
      ]
    }
    registries: empty(registryServer) ? [] : [
      {
        server: registryServer
        identity: identityId
      }
    ]
    // TCP ingress, external: 587 (STARTTLS) is the main port, 465 (implicit TLS) an additional one, each exposed on
    // the same number it listens on. Nothing else is open: no plain port in Azure (docs/smtp.md, "Devices that cannot
    // do TLS": the plain port is for a listener on the site's own network).
    ingressExternal: true
    ingressTransport: 'tcp'
    ingressTargetPort: 587
    exposedPort: 587
    additionalPortMappings: [
      {
        external: true
        targetPort: 465
        exposedPort: 465
      }
    ]
    ipSecurityRestrictions: ipSecurityRestrictions
    activeRevisionsMode: 'Single'
    // References to Key Vault only: no secret value passes through this template or its deployment history.
    secrets: [
      {
        name: loginsSecretRef
        keyVaultUrl: '${keyVaultUri}secrets/${loginsSecretName}'
        identity: identityId
      }
      {
        name: tlsSecretRef
        keyVaultUrl: '${keyVaultUri}secrets/${tlsCertificateName}'
        identity: identityId
      }
    ]
    volumes: [
      {
        name: 'smtp-secrets'
        storageType: 'Secret'
        secrets: [
          {
            secretRef: loginsSecretRef
            path: loginsFileName
          }
          {
            secretRef: tlsSecretRef
            path: tlsCertificateFileName
          }
        ]
      }
    ]
    // Scale: never to zero (a device's call must find a listener), out on open connections
    // (https://learn.microsoft.com/azure/container-apps/scale-app#tcp, concurrentConnections). A replica removed on
    // scale-in drops its sessions; a mail not yet answered 250 is retried by its device, and one answered 250 is queued.
    scaleSettings: {
      minReplicas: minReplicas
      maxReplicas: maxReplicas
      rules: [
        {
          name: 'smtp-connections'
          tcp: {
            metadata: {
              concurrentConnections: string(concurrentConnectionsPerReplica)
            }
          }
        }
      ]
    }
    containers: [
      {
        name: 'smtp'
        image: image
        resources: {
          // json(): Bicep has no decimal literal (the AVM module's own tests do the same).
          cpu: json('0.5')
          memory: '1Gi'
        }
        // The settings of docs/smtp.md. Secrets only as files (SMTP_LOGINS_FILE, SMTP_TLS_CERT_FILE); none here.
        env: [
          {
            name: 'SMTP_LOGINS_FILE'
            value: '${secretsMountPath}/${loginsFileName}'
          }
          {
            name: 'SMTP_TLS_CERT_FILE'
            value: '${secretsMountPath}/${tlsCertificateFileName}'
          }
          {
            name: 'SMTP_STARTTLS_PORT'
            value: '587'
          }
          {
            name: 'SMTP_TLS_PORT'
            value: '465'
          }
          {
            name: 'SMTP_PLAIN_PORT'
            value: '0'
          }
          {
            name: 'SMTP_HOSTNAME'
            value: empty(hostname) ? '${appName}.${smtpEnvironment.outputs.defaultDomain}' : hostname
          }
          {
            name: 'SMTP_PEER_IS_DEVICE'
            value: 'false'
          }
          {
            name: 'MAILRELAY_APPS'
            value: relayApps
          }
          {
            name: 'ALLOWED_SENDERS'
            value: allowedSenders
          }
          {
            name: 'MAIL_QUEUE_NAME'
            value: mailQueueName
          }
          {
            name: 'SMTP_QUEUE_SERVICE_URI'
            value: queueServiceUri
          }
          {
            name: 'AZURE_CLIENT_ID'
            value: identityClientId
          }
        ]
        volumeMounts: [
          {
            volumeName: 'smtp-secrets'
            mountPath: secretsMountPath
          }
        ]
        // TCP probes on the STARTTLS port: a replica that stops accepting is restarted (liveness) and gets no
        // connections until it accepts (readiness). A TCP connect says nothing of storage: a storage outage is
        // answered 451 per mail, and restarting the listener would not help it.
        probes: [
          {
            type: 'Liveness'
            tcpSocket: {
              port: 587
            }
            initialDelaySeconds: 5
            periodSeconds: 10
            failureThreshold: 3
          }
          {
            type: 'Readiness'
            tcpSocket: {
              port: 587
            }
            periodSeconds: 5
            failureThreshold: 3
          }
        ]
      }
    ]
  }
  // The identity's roles on the two secrets first: the revision reads them when it starts.
  dependsOn: [
    loginsSecretsUser
    tlsSecretsUser
  ]
}

// Outputs are named apart from the parameters (tests/infra/bicep_eval.py keeps one declaration per name).
output containerAppName string = listener.outputs.name
output fqdn string = listener.outputs.fqdn
output greetingName string = empty(hostname) ? '${appName}.${smtpEnvironment.outputs.defaultDomain}' : hostname
output managedEnvironmentName string = smtpEnvironment.outputs.name
output staticIp string = smtpEnvironment.outputs.?staticIp ?? ''
