"""The tenant model and its domains (django-tenants), in the public schema."""

from django.db import models
from django_tenants.models import DomainMixin, TenantMixin


class Client(TenantMixin):
    name = models.CharField(max_length=100)

    auto_create_schema = True  # saving a new Client creates and migrates its schema
    auto_drop_schema = True  # deleting a Client drops its schema

    def __str__(self) -> str:
        return self.name


class Domain(DomainMixin):
    pass
