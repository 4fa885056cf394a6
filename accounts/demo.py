"""The fictional demo consortium that ``seed_demo`` creates and ``make run`` prints.

Every person and institution here is invented.
"""

from __future__ import annotations

from dataclasses import dataclass

DEMO_PASSWORD = "yilian-demo-2026"  # noqa: S105 - a published demo password, demo data only


@dataclass(frozen=True)
class DemoInstitution:
    code: str
    kind: str
    name: str
    name_en: str
    city: str


@dataclass(frozen=True)
class DemoUser:
    email: str
    role: str
    name: str
    name_en: str
    institution: str | None = None
    title: str = ""
    verified: bool = True


INSTITUTIONS = [
    DemoInstitution("huakang", "hospital", "华康第一人民医院", "Huakang First People's Hospital", "杭州 Hangzhou"),
    DemoInstitution("mingde", "hospital", "明德大学附属医院", "Mingde University Hospital", "成都 Chengdu"),
    DemoInstitution("qinghe", "clinic", "青禾社区诊所", "Qinghe Community Clinic", "杭州 Hangzhou"),
    DemoInstitution("dongyue", "research", "东岳医学研究院", "Dongyue Institute of Medical Research", "济南 Jinan"),
]

USERS = [
    DemoUser("patient@demo.yilian", "patient", "张晓梅", "Zhang Xiaomei"),
    DemoUser("patient2@demo.yilian", "patient", "李建国", "Li Jianguo"),
    DemoUser("patient3@demo.yilian", "patient", "王雨桐", "Wang Yutong"),
    DemoUser("patient4@demo.yilian", "patient", "陈思远", "Chen Siyuan"),
    DemoUser("doctor@demo.yilian", "clinician", "刘志明", "Dr. Liu Zhiming", "huakang", "主治医师 Attending physician"),
    DemoUser("doctor2@demo.yilian", "clinician", "赵婧", "Dr. Zhao Jing", "mingde", "放射科医师 Radiologist"),
    DemoUser("doctor3@demo.yilian", "clinician", "孙浩", "Dr. Sun Hao", "qinghe", "全科医师 General practitioner"),
    DemoUser("nurse@demo.yilian", "clinician", "周敏", "Zhou Min", "huakang", "护士 Nurse"),
    DemoUser(
        "newdoctor@demo.yilian", "clinician", "吴磊", "Dr. Wu Lei", "huakang", "住院医师 Resident", verified=False
    ),
    DemoUser("researcher@demo.yilian", "researcher", "郑怡", "Zheng Yi", "dongyue", "研究员 Research fellow"),
    DemoUser("admin@demo.yilian", "institution_admin", "黄立", "Huang Li", "huakang", "信息科 IT office"),
    DemoUser("admin.mingde@demo.yilian", "institution_admin", "何静", "He Jing", "mingde"),
    DemoUser("admin.qinghe@demo.yilian", "institution_admin", "马超", "Ma Chao", "qinghe"),
    DemoUser("admin.dongyue@demo.yilian", "institution_admin", "高岩", "Gao Yan", "dongyue"),
    DemoUser("operator@demo.yilian", "operator", "节点运维", "Node operator"),
]

# In ``make cluster`` each institution runs its own node (node i: the i-th institution above; nodes
# beyond them are authorities with no institution). Staff live on their institution's node, patients on
# the node where they registered (their home node), and every node has its own operator.
PATIENT_HOMES = {
    "patient@demo.yilian": "huakang",
    "patient2@demo.yilian": "huakang",
    "patient3@demo.yilian": "mingde",
    "patient4@demo.yilian": "qinghe",
}

# What ``make run`` prints: one login per portal.
PORTALS = [
    ("patient", "Patient portal / 患者门户"),
    ("clinician", "Clinic dashboard / 医生工作台"),
    ("researcher", "Research portal / 科研门户"),
    ("institution_admin", "Institution admin / 机构管理"),
    ("operator", "Node operator / 节点运维"),
]


def cluster_institution(index: int) -> str:
    """The institution whose node is node ``index`` (1…) of ``make cluster``; "" for one beyond them."""
    return INSTITUTIONS[index - 1].code if 1 <= index <= len(INSTITUTIONS) else ""


def home_of(user: DemoUser) -> str | None:
    """The institution whose node holds this demo user's account; None: every node (the operator)."""
    return user.institution or PATIENT_HOMES.get(user.email)


def users_at(institution: str | None) -> list[DemoUser]:
    """The demo users one node holds: all (None: the single node), one institution's, or the operator ("")."""
    if institution is None:
        return list(USERS)
    return [user for user in USERS if home_of(user) in (None, institution)]


def headline_logins(present: set[str]) -> list[tuple[str, str]]:
    """One login per portal, among the demo accounts in ``present`` (the emails this node holds)."""
    logins = []
    for role, label in PORTALS:
        email = next((u.email for u in USERS if u.role == role and u.verified and u.email in present), None)
        if email is not None:
            logins.append((email, label))
    return logins


def login_lines() -> list[str]:
    """The demo logins this node holds, as ``seed_demo`` and ``runnode`` print them."""
    from accounts.models import User

    present = set(User.objects.filter(email__in=[u.email for u in USERS]).values_list("email", flat=True))
    logins = headline_logins(present)
    if not logins:
        return []
    return [f"Demo logins (password for all: {DEMO_PASSWORD}):"] + [f"  {label:<34} {email}" for email, label in logins]


def banner_lines() -> list[str]:
    """What ``runnode`` prints under its address (``settings.NODE_BANNER``): the demo logins."""
    return login_lines()
