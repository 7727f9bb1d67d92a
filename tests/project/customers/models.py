from django.db import models
from django_tenants.models import DomainMixin, TenantMixin


class Client(TenantMixin):
    name = models.CharField(max_length=100)
    #: IANA zone name (beat's ``tenant_timezone`` option); "" means the app's zone.
    timezone = models.CharField(max_length=64, blank=True, default="", db_default="")

    auto_create_schema = True
    auto_drop_schema = True


class Domain(DomainMixin):
    pass
