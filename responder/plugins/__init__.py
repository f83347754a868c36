"""Everything a playbook step can use, in one registry: core steps, evidence collectors, actions
and notifiers. Each plug-in describes itself (parameters, result, cluster impact, RBAC, example)."""
