"""The certificate list and each certificate's page (search, filters, detail, revocation)."""

from __future__ import annotations

from werkzeug.wrappers import Response

from ca_service.ui.blueprint import render, ui
from ca_service.ui.session import signed_in


@ui.get("/ui/certificates")
@signed_in()
def certificates() -> Response:
    return render("placeholder.html", title="Certificates", nav="ui.certificates")
