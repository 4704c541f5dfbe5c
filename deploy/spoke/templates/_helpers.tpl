{{/* Names and labels shared by every template of the spoke's chart. */}}

{{- define "aqueduct-spoke.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* RELEASE-aqueduct-spoke, or RELEASE when it already names the chart; 63 characters at most. */}}
{{- define "aqueduct-spoke.fullname" -}}
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

{{- define "aqueduct-spoke.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aqueduct-spoke.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "aqueduct-spoke.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "aqueduct-spoke.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: aqueduct
aqueduct.io/region: {{ .Values.region.name }}
{{- end }}

{{- define "aqueduct-spoke.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "aqueduct-spoke.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "aqueduct-spoke.enrolSecret" -}}
{{- default (printf "aqueduct-enrol-%s" .Values.region.name) .Values.region.enrolSecret }}
{{- end }}

{{- define "aqueduct-spoke.leaseName" -}}
{{- default (printf "aqueduct-operator-%s" .Values.region.name) .Values.operator.leaseName }}
{{- end }}

{{- define "aqueduct-spoke.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "aqueduct-spoke.holderImage" -}}
{{- printf "%s:%s" (default .Values.image.repository .Values.holder.image.repository) (default (default .Chart.AppVersion .Values.image.tag) .Values.holder.image.tag) }}
{{- end }}

{{/* The holder's pods: labels of their own, which the spoke's selector does not match. */}}
{{- define "aqueduct-spoke.holderSelectorLabels" -}}
app.kubernetes.io/name: {{ include "aqueduct-spoke.name" . }}-holder
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The CSI driver's name: fixed, the operator writes it into every PersistentVolume. */}}
{{- define "aqueduct-spoke.driver" -}}csi.aqueduct.io{{- end }}

{{/* Where the spoke's config, enrolment Secret and data are inside its container. */}}
{{- define "aqueduct-spoke.configPath" -}}/etc/aqueduct/spoke.toml{{- end }}
{{- define "aqueduct-spoke.enrolPath" -}}/etc/aqueduct/enrol{{- end }}
