"""The Slack bot (slack-bolt): approval buttons, the dismiss modal and ``/drift``.

``app`` builds and serves it (HTTP or Socket Mode); ``listeners`` handles approvals, ``slash``
the command, ``suppressing`` the dismiss modal's "suppress similar alerts" and the listing of
suppressions, ``authorising`` user groups and command users, ``replay`` replay protection, and
``commands`` the manual pod actions (no Slack imports).
"""
