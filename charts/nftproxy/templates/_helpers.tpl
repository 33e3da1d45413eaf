{{/* The labels every object carries; the pods are selected by the name. */}}
{{- define "nftproxy.labels" -}}
app.kubernetes.io/name: nftproxy
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "nftproxy.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The KubeProxyConfiguration: the values' config over the kind. */}}
{{- define "nftproxy.config" -}}
{{- $config := merge (dict "apiVersion" "kubeproxy.config.k8s.io/v1alpha1" "kind" "KubeProxyConfiguration") (deepCopy .Values.config) -}}
{{ toYaml $config }}
{{- end }}
