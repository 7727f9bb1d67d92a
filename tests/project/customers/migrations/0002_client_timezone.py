from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("customers", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="client",
            name="timezone",
            field=models.CharField(blank=True, db_default="", default="", max_length=64),
        ),
    ]
