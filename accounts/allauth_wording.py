"""allauth's messages whose Simplified Chinese the portals word their own way.

allauth's own zh_Hans catalogue writes "Email" (in Latin letters) where the
portals say 电子邮箱, and "两步验证" where they say 双重验证: a patient
signing up read "确认Email地址" one page after "电子邮箱". The project's
catalogue (``LOCALE_PATHS``) comes before any app's, so the messages named
here, translated again in ``locale/zh_Hans``, replace allauth's wording;
``makemessages`` finds them in this module. Nothing imports it at run time.
"""

from django.utils.translation import gettext_noop

MESSAGES = (
    gettext_noop("Email Address"),
    gettext_noop("Email Addresses"),
    gettext_noop("The following email addresses are associated with your account:"),
    gettext_noop("Primary"),
    gettext_noop("Make Primary"),
    gettext_noop("Re-send Verification"),
    gettext_noop("Add Email Address"),
    gettext_noop("Add Email"),
    gettext_noop("Do you really want to remove the selected email address?"),
    gettext_noop("Current email"),
    gettext_noop("Change Email"),
    gettext_noop("Confirm Email Address"),
    gettext_noop("Verify Your Email Address"),
    gettext_noop("Username or email"),
    gettext_noop("Your account has no verified email address."),
    gettext_noop("You cannot activate two-factor authentication until you have verified your email address."),
    gettext_noop("You cannot remove your primary email address (%(email)s)."),
    gettext_noop("You have confirmed %(email)s."),
    gettext_noop("Removed email address %(email)s."),
    gettext_noop("Primary email address set."),
    gettext_noop("Email Changed"),
    gettext_noop("Your email has been confirmed."),
    gettext_noop("Email Confirmation"),
    gettext_noop("Please Confirm Your Email Address"),
    gettext_noop("Email address %(deleted_email)s has been removed from your account."),
    gettext_noop("Email Removed"),
)
