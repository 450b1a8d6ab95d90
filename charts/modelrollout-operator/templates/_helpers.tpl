{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "modelrollout.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the prefix of every object this chart creates. */}}
{{- define "modelrollout.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "modelrollout.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "modelrollout.selectorLabels" -}}
app.kubernetes.io/name: {{ include "modelrollout.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "modelrollout.labels" -}}
helm.sh/chart: {{ include "modelrollout.chart" . }}
{{ include "modelrollout.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: modelrollout
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "modelrollout.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "modelrollout.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "modelrollout.peeringName" -}}
{{- default (include "modelrollout.fullname" .) .Values.leaderElection.peeringName }}
{{- end }}

{{- define "modelrollout.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* True (non-empty) when the operator watches only the listed namespaces. */}}
{{- define "modelrollout.namespaced" -}}
{{- if gt (len .Values.watchNamespaces) 0 }}true{{ end }}
{{- end }}

{{/*
The operator's command-line flags (the image's ENTRYPOINT is `modelrollout run`).
One list item per token, so no value is ever re-split by a shell.
*/}}
{{- define "modelrollout.args" -}}
{{- if include "modelrollout.namespaced" . }}
{{- range .Values.watchNamespaces }}
- --namespace
- {{ . | quote }}
{{- end }}
{{- else }}
- --all-namespaces
{{- end }}
- --prometheus-url
- {{ .Values.prometheus.url | quote }}
- --log-level
- {{ .Values.logLevel | quote }}
- --log-format
- {{ .Values.logFormat | quote }}
- --metrics-port
- {{ .Values.metrics.port | quote }}
{{- if .Values.leaderElection.enabled }}
- --peering
- {{ include "modelrollout.peeringName" . | quote }}
{{- else }}
- --standalone
{{- end }}
- --liveness-loop-stall
- {{ .Values.health.loopStallSeconds | quote }}
- --liveness-watch-down
- {{ .Values.health.watchDownSeconds | quote }}
- --liveness-reconcile-stall
- {{ .Values.health.reconcileStallSeconds | quote }}
- --liveness-exit-after
- {{ .Values.health.exitAfterSeconds | quote }}
{{- with .Values.labelSelector }}
- --selector
- {{ . | quote }}
{{- end }}
{{- range .Values.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/*
RBAC rules for objects in the watched namespaces: a ClusterRole in all-namespaces mode, a
Role in each watched namespace otherwise. One rule per resource, each explained in
docs/rbac.md (a unit test compares the two).
*/}}
{{- define "modelrollout.namespacedRules" -}}
- apiGroups: ["modelrollout.dev"]
  resources: ["modelrollouts"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["modelrollout.dev"]
  resources: ["modelrollouts/status"]
  verbs: ["patch"]
- apiGroups: ["modelrollout.dev"]
  resources: ["modelrollouts/finalizers"]
  verbs: ["update"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "update"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch", "update"]
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["networking.istio.io"]
  resources: ["virtualservices"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- if .Values.rbac.readSecrets }}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- end }}
{{- if and .Values.leaderElection.enabled (include "modelrollout.namespaced" .) }}
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
{{- end }}

{{/* RBAC rules on cluster-scoped objects (always a ClusterRole). */}}
{{- define "modelrollout.clusterRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- if include "modelrollout.namespaced" . }}
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- else if .Values.leaderElection.enabled }}
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
{{- end }}
