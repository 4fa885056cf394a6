"""People and institutions: users with roles, institutions, staff verification, keys."""

from __future__ import annotations

import uuid

from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.db import models
from django.utils import timezone
from django.utils.translation import get_language
from django.utils.translation import gettext_lazy as _


class Role(models.TextChoices):
    PATIENT = "patient", _("Patient")
    CLINICIAN = "clinician", _("Clinician")
    RESEARCHER = "researcher", _("Researcher")
    INSTITUTION_ADMIN = "institution_admin", _("Institution administrator")
    OPERATOR = "operator", _("Node operator")


STAFF_ROLES = frozenset({Role.CLINICIAN, Role.RESEARCHER, Role.INSTITUTION_ADMIN})


class KeyHolder(models.Model):
    """An X25519 key pair (encryption) and an Ed25519 key pair (signing).

    Private keys are stored only wrapped by the node KEK, with the owner's
    label bound in as associated data (see ``accounts.keys``), so a database
    dump reveals no private key and a wrapped key copied to another row fails.
    """

    enc_public = models.BinaryField(max_length=32, editable=False, default=b"")
    enc_private_wrapped = models.BinaryField(editable=False, default=b"")
    sign_public = models.BinaryField(max_length=32, editable=False, default=b"")
    sign_private_wrapped = models.BinaryField(editable=False, default=b"")

    class Meta:
        abstract = True

    def key_owner(self) -> str:
        """The label bound into every wrapped key of this holder (``user:<uuid>``, …).

        Each concrete holder (User, Institution) defines it; this abstract model
        never has rows of its own.
        """
        raise NotImplementedError(f"{type(self).__name__} must define key_owner()")

    @property
    def has_keys(self) -> bool:
        return bool(self.enc_public) and bool(self.sign_public)


class Institution(KeyHolder):
    class Kind(models.TextChoices):
        HOSPITAL = "hospital", _("Hospital")
        CLINIC = "clinic", _("Clinic")
        RESEARCH = "research", _("Research institute")

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    code = models.SlugField(_("code"), max_length=40, unique=True)
    kind = models.CharField(_("kind"), max_length=16, choices=Kind.choices)
    name = models.CharField(_("name (Chinese)"), max_length=200)
    name_en = models.CharField(_("name (English)"), max_length=200, blank=True)
    city = models.CharField(_("city"), max_length=100, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    # The node that holds this institution's people: "" for this node. An institution of another
    # node is a directory row projected from the chain (accounts.directory): public keys, no private.
    home_node = models.CharField(_("home node"), max_length=64, blank=True, default="")
    # The directory listing this node last submitted for its own institution; "" while one is owed.
    directory_tx = models.CharField(max_length=80, blank=True, default="", editable=False)

    class Meta:
        ordering = ["code"]
        verbose_name = _("institution")
        verbose_name_plural = _("institutions")

    def __str__(self) -> str:
        return self.display_name

    @property
    def display_name(self) -> str:
        language = get_language() or ""
        if language.startswith("en") and self.name_en:
            return self.name_en
        return self.name

    def key_owner(self) -> str:
        return f"institution:{self.public_id}"

    @property
    def is_remote(self) -> bool:
        return bool(self.home_node)


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def create_user(self, email: str, password: str | None = None, **fields) -> User:
        from accounts.keys import issue_keys

        if not email:
            raise ValueError("An email address is required.")
        user = self.model(email=self.normalize_email(email).lower(), **fields)
        user.set_password(password)
        issue_keys(user)
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **fields) -> User:
        from django.db import transaction

        from accounts.ledger import key_registration_submit

        fields.setdefault("role", Role.OPERATOR)
        fields.setdefault("is_staff", True)
        fields.setdefault("is_superuser", True)
        with transaction.atomic():
            user = self.create_user(email, password, **fields)
            key_registration_submit(user, kind="user")
        return user


class Sex(models.TextChoices):
    FEMALE = "female", _("Female")
    MALE = "male", _("Male")
    OTHER = "other", _("Other")


class User(KeyHolder, AbstractBaseUser, PermissionsMixin):
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    email = models.EmailField(_("email address"), unique=True)
    name = models.CharField(_("full name"), max_length=150, blank=True)
    name_en = models.CharField(_("name in English"), max_length=150, blank=True)
    role = models.CharField(_("role"), max_length=20, choices=Role.choices, default=Role.PATIENT)
    institution = models.ForeignKey(
        Institution,
        verbose_name=_("institution"),
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="staff",
    )
    staff_title = models.CharField(_("title"), max_length=100, blank=True)
    # A patient's Yilian ID (accounts/health_id.py): what they give a clinic, and show as a QR code.
    health_id = models.CharField(_("Yilian ID"), max_length=9, unique=True, null=True, blank=True, editable=False)
    # The language of the portal they last chose: their notification emails are written in it.
    language = models.CharField(_("language"), max_length=10, blank=True)
    # A patient's demographics: shown to those they share with, and (generalised) in research datasets.
    birth_date = models.DateField(_("date of birth"), null=True, blank=True)
    sex = models.CharField(_("sex"), max_length=8, choices=Sex.choices, blank=True)
    verified_at = models.DateTimeField(_("verified at"), null=True, blank=True)
    verified_by = models.ForeignKey(
        "self",
        verbose_name=_("verified by"),
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    is_active = models.BooleanField(_("active"), default=True)
    is_staff = models.BooleanField(
        _("admin site access"),
        default=False,
        help_text=_("Whether the user can sign in to the administration site."),
    )
    date_joined = models.DateTimeField(_("date joined"), default=timezone.now)
    # The node that holds this person's account, password and private keys: "" for this node.
    # Someone whose home is another node has a row here only as what this node may know of them
    # (docs/identity.md): staff from the chain's directory, a patient from the card they showed.
    home_node = models.CharField(_("home node"), max_length=64, blank=True, default="")
    # For this node's staff: the directory listing last submitted for them; "" while one is owed.
    directory_tx = models.CharField(max_length=80, blank=True, default="", editable=False)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    class Meta:
        ordering = ["email"]
        verbose_name = _("user")
        verbose_name_plural = _("users")
        constraints = [
            models.CheckConstraint(
                condition=models.Q(role="patient") | models.Q(role="operator") | models.Q(institution__isnull=False),
                name="staff_belongs_to_institution",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.display_name} <{self.email}>"

    def save(self, *args, **kwargs) -> None:
        if self.role == Role.PATIENT and not self.health_id:
            from accounts.health_id import new_health_id

            self.health_id = new_health_id()
            while User.objects.filter(health_id=self.health_id).exists():  # about once per 10^12
                self.health_id = new_health_id()
            if kwargs.get("update_fields") is not None:
                kwargs["update_fields"] = {*kwargs["update_fields"], "health_id"}
        super().save(*args, **kwargs)

    @property
    def health_id_display(self) -> str:
        from accounts.health_id import formatted

        return formatted(self.health_id) if self.health_id else ""

    @property
    def display_name(self) -> str:
        language = get_language() or ""
        if language.startswith("en") and self.name_en:
            return self.name_en
        return self.name or self.email

    def key_owner(self) -> str:
        return f"user:{self.public_id}"

    @property
    def is_remote(self) -> bool:
        return bool(self.home_node)

    @property
    def is_institution_staff(self) -> bool:
        return self.role in STAFF_ROLES

    @property
    def is_verified_staff(self) -> bool:
        """Staff whose institution admin has vouched for them.

        Until verified, a staff account reaches no patient data at all.
        """
        return (
            self.is_active
            and self.is_institution_staff
            and self.institution_id is not None
            and self.verified_at is not None
        )


class ListedInstitution(models.Model):
    """An institution in the consortium's directory (projection of ``accounts/institution/<code>``)."""

    state_key = models.CharField(max_length=255, unique=True, editable=False)
    code = models.SlugField(max_length=40, unique=True)
    public_id = models.CharField(max_length=36)
    sign_public = models.CharField(max_length=64)
    kind = models.CharField(max_length=16)
    name = models.CharField(max_length=200)
    name_en = models.CharField(max_length=200, blank=True)
    city = models.CharField(max_length=100, blank=True)
    node = models.CharField(max_length=64)
    tx_cid = models.CharField(max_length=80)

    class Meta:
        verbose_name = _("listed institution")
        verbose_name_plural = _("listed institutions")

    def __str__(self) -> str:
        return f"{self.code} @ {self.node}"


class ListedStaff(models.Model):
    """A staff member in the consortium's directory (projection of ``accounts/staff/<sign key>``)."""

    state_key = models.CharField(max_length=255, unique=True, editable=False)
    sign_public = models.CharField(max_length=64, unique=True)
    public_id = models.CharField(max_length=36)
    institution_code = models.CharField(max_length=40, db_index=True)
    role = models.CharField(max_length=20)
    name = models.CharField(max_length=150, blank=True)
    name_en = models.CharField(max_length=150, blank=True)
    title = models.CharField(max_length=100, blank=True)
    listed = models.BooleanField()
    tx_cid = models.CharField(max_length=80)

    class Meta:
        verbose_name = _("listed staff member")
        verbose_name_plural = _("listed staff")

    def __str__(self) -> str:
        return f"{self.sign_public[:16]}… @ {self.institution_code}"
