{{/* Names and labels shared by every template of the hub's chart. */}}

{{- define "aqueduct-hub.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* RELEASE-aqueduct-hub, or RELEASE when it already names the chart; 63 characters at most. */}}
{{- define "aqueduct-hub.fullname" -}}
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

{{- define "aqueduct-hub.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aqueduct-hub.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "aqueduct-hub.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "aqueduct-hub.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: aqueduct
{{- end }}

{{- define "aqueduct-hub.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Where the hub keeps its data and config inside the container (the image's defaults). */}}
{{- define "aqueduct-hub.dataDir" -}}/var/lib/aqueduct-hub{{- end }}
{{- define "aqueduct-hub.configPath" -}}/etc/aqueduct/hub.toml{{- end }}
