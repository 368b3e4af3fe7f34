from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("consensus", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="appliedstate",
            name="compacted_through",
            field=models.BigIntegerField(default=0, db_default=0),
        ),
    ]
