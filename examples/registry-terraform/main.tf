# Reads the web image that the registry's `prod` channel points at, with Terraform's
# built-in http backend: no provider to download. run.sh sets the address.
variable "registry" {
  default = "http://127.0.0.1:8700"
}

data "terraform_remote_state" "web" {
  backend = "http"
  config = {
    # Add ?fail_if_revoked=1 to make `terraform plan` stop on a revoked version.
    address = "${var.registry}/terraform/web/prod"
  }
}

output "image" {
  value = data.terraform_remote_state.web.outputs.artifacts["qemu"]["local"]
}
output "fingerprint" {
  value = data.terraform_remote_state.web.outputs.fingerprint
}
output "revoked" {
  value = data.terraform_remote_state.web.outputs.revoked
}
