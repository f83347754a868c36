{{/* Names, labels, the image, the environment and the shared pod parts. */}}

{{- define "drift-responder.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "drift-responder.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A component's resource name: <fullname>-<component>. Call with (dict "root" $ "component" "x"). */}}
{{- define "drift-responder.componentName" -}}
{{- printf "%s-%s" (include "drift-responder.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "drift-responder.selectorLabels" -}}
app.kubernetes.io/name: {{ include "drift-responder.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end -}}

{{- define "drift-responder.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "drift-responder.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: drift-responder
{{- end -}}

{{- define "drift-responder.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "drift-responder.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "drift-responder.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
The environment of a drift-responder container: the settings ConfigMap, then the Secret's keys
this component needs. Call with (dict "root" $ "secrets" (list "databaseUrl" ...)).
Optional keys (Slack, registry) are referenced with optional: true.
*/}}
{{- define "drift-responder.env" -}}
{{- $root := .root -}}
{{- $vars := dict "ingestToken" "DRIFT_INGEST_TOKEN" "databaseUrl" "DRIFT_DATABASE_URL" "redisUrl" "DRIFT_REDIS_URL" "slackBotToken" "SLACK_BOT_TOKEN" "slackSigningSecret" "SLACK_SIGNING_SECRET" "slackAppToken" "SLACK_APP_TOKEN" "registryCredentials" "DRIFT_REGISTRY_CREDENTIALS" -}}
{{- $optional := list "slackBotToken" "slackSigningSecret" "slackAppToken" "registryCredentials" -}}
envFrom:
  - configMapRef:
      name: {{ include "drift-responder.fullname" $root }}
env:
{{- range .secrets }}
{{- $key := index $root.Values.secrets.keys . }}
{{- if $key }}
  - name: {{ index $vars . }}
    valueFrom:
      secretKeyRef:
        name: {{ $root.Values.secrets.name }}
        key: {{ $key }}
        {{- if has . $optional }}
        optional: true
        {{- end }}
{{- end }}
{{- end }}
{{- with .extra }}
{{ toYaml . | indent 2 }}
{{- end }}
{{- end -}}

{{/* The writable places of a read-only container. Call with (dict "root" $ "artifacts" bool). */}}
{{- define "drift-responder.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: data
  mountPath: /var/lib/drift-responder
{{- if .artifacts }}
- name: artifacts
  mountPath: /var/lib/drift-responder/artifacts
{{- end }}
{{- end -}}

{{- define "drift-responder.volumes" -}}
- name: tmp
  emptyDir: {}
- name: data
  emptyDir: {}
{{- if .artifacts }}
- name: artifacts
  {{- if .root.Values.artifacts.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .root.Values.artifacts.existingClaim }}
  {{- else }}
  emptyDir: {}
  {{- end }}
{{- end }}
{{- end -}}

{{/* nodeSelector, tolerations, affinity of a component's values. */}}
{{- define "drift-responder.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Pod annotations: a checksum of the settings (pods restart when they change), plus extras. */}}
{{- define "drift-responder.podAnnotations" -}}
checksum/config: {{ include (print .root.Template.BasePath "/configmap.yaml") .root | sha256sum }}
{{- with .extra }}
{{ toYaml . }}
{{- end }}
{{- end -}}
